"""The `logs` and `freshness` parts of scripts/bench: log ingestion's lines/s beside pflogsumm on
the same log, and how soon a delivered message shows in message tracking while Postfix logs
300 messages a second.

`logs` alternates the readers (A B B A ..., at least three rounds each) so that drift on a shared
machine falls on all of them, and reports medians. Each ingestion round runs in its own process
(`once` below) against a fresh database made from a migrated template, and times `run_once` alone
(as the job's unit runs it, less the interpreter's start); pflogsumm is timed as a whole command.
`--before DIR` adds a third reader: the ingestion of another checkout (e.g. main), for a before
and after from one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import ROOT, save, svg_bars, table


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _env(checkout: Path, dsn: str, log: Path, state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "DATABASE_URL": dsn,
        "POSTFIX_LOG_FILE": str(log),
        "STATE_DIR": str(state),
        "PICCOLO_CONF": "app.piccolo_conf",
    }


def _migrate(checkout: Path, dsn: str, log: Path, state: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        check=True,
        capture_output=True,
        cwd=checkout,
        env=_env(checkout, dsn, log, state),
    )


def once() -> None:
    """Child process: one ingestion of POSTFIX_LOG_FILE from its start; prints the seconds."""
    from app.jobs import ingest
    from app.piccolo_conf import DB
    from app.settings import load_settings

    settings = load_settings()

    async def run() -> dict[str, Any]:
        await DB.start_connection_pool(min_size=1, max_size=2)
        try:
            started = time.perf_counter()
            result = await ingest.run_once(settings)
            seconds = time.perf_counter() - started
        finally:
            await DB.close_connection_pool()
        return {"seconds": seconds, "lines": result.lines, "rows": result.rows}

    print(json.dumps(asyncio.run(run())))


def bench_logs(quick: bool, before: Path | None = None) -> None:
    """Ingestion into PostgreSQL beside pflogsumm reading the same generated log."""
    from tests.loggen import traffic
    from tests.pgcluster import PostgresCluster

    messages = 2_000 if quick else 20_000
    rounds = 3 if quick else 5
    readers = {"ours": ROOT}
    if before is not None:
        readers = {"before": before.resolve(), **readers}
    cluster = PostgresCluster().start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    times: dict[str, list[float]] = {name: [] for name in [*readers, "pflogsumm"]}
    loads: list[str] = []
    try:
        log = workdir / "postfix.log"
        log.write_text(traffic(0, messages).text())
        lines = sum(1 for _ in log.open())
        state = workdir / "state"
        for name, checkout in readers.items():
            _migrate(checkout, cluster.create_database(f"tpl_{name}"), log, state)
        order = [*readers, "pflogsumm"]
        for number in range(rounds):
            # A B B A: each reader runs first as often as last.
            for name in order if number % 2 == 0 else order[::-1]:
                loads.append(_load())
                if name == "pflogsumm":
                    started = time.perf_counter()
                    subprocess.run(["pflogsumm", str(log)], check=True, capture_output=True)
                    times[name].append(time.perf_counter() - started)
                    continue
                database = f"round{number}_{name}"
                dsn = cluster.create_database(database, template=f"tpl_{name}")
                checkout = readers[name]
                child = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "once"],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=checkout,
                    env=_env(checkout, dsn, log, state),
                )
                answer = json.loads(child.stdout.splitlines()[-1])
                if answer["lines"] != lines:
                    sys.exit(f"{name} read {answer['lines']} of {lines} lines")
                times[name].append(answer["seconds"])
                cluster.drop_database(database)
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    labels = {
        "before": f"ingest-logs before ({readers.get('before', '')})",
        "ours": "mailrelay ingest-logs (parse + PostgreSQL, triggers on)",
        "pflogsumm": "pflogsumm (parse + report, no database)",
    }
    medians = {name: statistics.median(values) for name, values in times.items()}
    rows = [
        [
            labels[name],
            len(values),
            f"{medians[name]:.2f}",
            f"{min(values):.2f}-{max(values):.2f}",
            f"{lines / medians[name]:,.0f}",
            f"{medians['pflogsumm'] / medians[name]:.2f}x",
        ]
        for name, values in times.items()
    ]
    data = {
        "lines": lines,
        "messages": messages,
        "rounds": rounds,
        "seconds": times,
        "median_s": medians,
        "lines_per_s": {name: lines / median for name, median in medians.items()},
        "ratio_to_pflogsumm": {
            name: medians["pflogsumm"] / median for name, median in medians.items()
        },
        "load_average_before_each_run": loads,
    }
    text = table(
        f"Log ingestion vs pflogsumm on the same generated log ({lines} lines), "
        f"{rounds} alternated rounds each, medians",
        ["reader", "runs", "median s", "range s", "lines/s", "vs pflogsumm"],
        rows,
    )
    text += f"\nload average (1/5/15 min) before the runs: {loads[0]} ... {loads[-1]}"
    chart = svg_bars(
        "Lines per second (median)",
        [f"{lines} lines"],
        {name: [lines / medians[name]] for name in times},
        "lines/s",
    )
    save("logs", data, chart, text)


if __name__ == "__main__" and sys.argv[1:] == ["once"]:
    once()
