"""The `logs` and `freshness` parts of scripts/bench: log ingestion's lines/s beside pflogsumm on
the same log, and how soon a delivered message shows in message tracking while Postfix logs
300 messages a second.

`logs` alternates the readers (A B B A ..., at least three rounds each) so that drift on a shared
machine falls on all of them, and reports medians. Each ingestion round runs in its own process
(`once` below) against a fresh database made from a migrated template, and times `run_once` alone
(as the job's unit runs it, less the interpreter's start); pflogsumm is timed as a whole command.
Both parts' PostgreSQL keeps a node's durability (fsync, full-page writes and synchronous commit
on, Debian's defaults), unlike the test suite's: what a commit waits for is part of the cost.
`--before DIR` adds a third reader: the ingestion of another checkout (e.g. main), for a before
and after from one run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
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
    """Child process: one ingestion of POSTFIX_LOG_FILE from its start; prints the seconds, and
    the CPU seconds of this process and of its PostgreSQL backends."""
    from app.jobs import ingest
    from app.piccolo_conf import DB
    from app.settings import load_settings

    settings = load_settings()

    try:  # the pool as the job opens it (app.db.pool, since 2026-12-06)
        from app.db.pool import start
    except ImportError:  # a checkout from before it (--before)

        async def start(min_size: int, max_size: int, **options: object) -> None:
            await DB.start_connection_pool(min_size=min_size, max_size=max_size, **options)

    async def run() -> dict[str, Any]:
        # Both connections up front, so that the backends counted are all the run uses.
        await start(min_size=2, max_size=2)
        try:
            rows = await ingest.LogCursor.raw(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            )
            backends = [row["pid"] for row in rows]
            database_cpu = sum(_cpu(pid) for pid in backends)
            own_cpu = time.process_time()
            started = time.perf_counter()
            result = await ingest.run_once(settings)
            seconds = time.perf_counter() - started
            own_cpu = time.process_time() - own_cpu
            database_cpu = sum(_cpu(pid) for pid in backends) - database_cpu
        finally:
            await DB.close_connection_pool()
        return {
            "seconds": seconds,
            "cpu": own_cpu + database_cpu,
            "python_cpu": own_cpu,
            "database_cpu": database_cpu,
            "lines": result.lines,
            "rows": result.rows,
        }

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
    cluster = PostgresCluster(durable=True).start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    times: dict[str, list[float]] = {name: [] for name in [*readers, "pflogsumm"]}
    # CPU seconds: on a shared machine the wall clock also counts the neighbours' work, and
    # the ingestion needs two processes (itself and its database backend) where pflogsumm
    # needs one.
    cpus: dict[str, list[float]] = {name: [] for name in times}
    split: dict[str, list[tuple[float, float]]] = {name: [] for name in readers}
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
                    children = resource.getrusage(resource.RUSAGE_CHILDREN)
                    started = time.perf_counter()
                    subprocess.run(["pflogsumm", str(log)], check=True, capture_output=True)
                    times[name].append(time.perf_counter() - started)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpus[name].append(
                        after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
                    )
                    continue
                database = f"round{number}_{name}"
                cluster.create_database(database, template=f"tpl_{name}")
                # Over the Unix socket, as the job reaches the node's PostgreSQL
                # (scripts/install-node). Loopback TCP, where the sender's send() also runs the
                # receiving side's TCP, cost the bench log 0.1 CPU s more in Python and 0.07
                # more in PostgreSQL (six alternated runs each).
                dsn = cluster.socket_dsn(database)
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
                cpus[name].append(answer["cpu"])
                split[name].append((answer["python_cpu"], answer["database_cpu"]))
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
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    rows = [
        [
            labels[name],
            len(values),
            f"{medians[name]:.2f}",
            f"{min(values):.2f}-{max(values):.2f}",
            f"{lines / medians[name]:,.0f}",
            f"{medians['pflogsumm'] / medians[name]:.2f}x",
            f"{cpu[name]:.2f}",
            f"{cpu['pflogsumm'] / cpu[name]:.2f}x",
        ]
        for name, values in times.items()
    ]
    data = {
        "lines": lines,
        "messages": messages,
        "rounds": rounds,
        "seconds": times,
        "cpu_seconds": cpus,
        "python_and_database_cpu_seconds": split,
        "median_s": medians,
        "median_cpu_s": cpu,
        "lines_per_s": {name: lines / median for name, median in medians.items()},
        "ratio_to_pflogsumm": {
            name: medians["pflogsumm"] / median for name, median in medians.items()
        },
        "cpu_ratio_to_pflogsumm": {name: cpu["pflogsumm"] / value for name, value in cpu.items()},
        "load_average_before_each_run": loads,
    }
    text = table(
        f"Log ingestion vs pflogsumm on the same generated log ({lines} lines), "
        f"{rounds} alternated rounds each, medians",
        ["reader", "runs", "median s", "range s", "lines/s", "vs pflogsumm", "CPU s", "CPU vs"],
        rows,
    )
    for name, parts in split.items():
        python_cpu = statistics.median(part[0] for part in parts)
        database_cpu = statistics.median(part[1] for part in parts)
        text += (
            f"\n{name}: CPU s median {python_cpu:.2f} in Python, {database_cpu:.2f} in PostgreSQL"
        )
    text += f"\nload average (1/5/15 min) before the runs: {loads[0]} ... {loads[-1]}"
    chart = svg_bars(
        "Lines per second (median)",
        [f"{lines} lines"],
        {name: [lines / medians[name]] for name in times},
        "lines/s",
    )
    save("logs", data, chart, text)


# -- freshness ---------------------------------------------------------------------------------

SENDER = "fresh@bench.example"


def _message_lines(number: int, at: float) -> tuple[str, str]:
    """A message's lines as Postfix logs them (smtpd, cleanup, qmgr, smtp, qmgr) and its id."""
    from tests.loggen import line

    when = dt.datetime.fromtimestamp(at, dt.UTC)
    qid = f"4dLq2G{number:06d}z1bc"
    client = f"app{number % 3}.example.com[198.18.0.{30 + number % 3}]"
    texts = [
        ("smtpd", f"connect from {client}"),
        ("smtpd", f"{qid}: client={client}"),
        ("cleanup", f"{qid}: message-id=<{number}.{qid}@app.example.com>"),
        ("smtpd", f"disconnect from {client} ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"),
        ("qmgr", f"{qid}: from=<{SENDER}>, size={1000 + number}, nrcpt=1 (queue active)"),
        (
            "smtp",
            f"{qid}: to=<r{number}@dest.example>, relay=mx.dest.example[203.0.113.5]:25, "
            "delay=0.2, delays=0.05/0.01/0.04/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
        ),
        ("qmgr", f"{qid}: removed"),
    ]
    return "".join(line(when, service, text) for service, text in texts), qid


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def bench_freshness(quick: bool, before: Path | None = None) -> None:
    """From a message's status=sent line written to the log to its row in message tracking,
    while lines of 300 messages a second are appended to the log and `mailrelay ingest-logs
    --follow` reads it as its unit runs it. `--before CHECKOUT`: first the same with that
    checkout's ingest-logs started as its old timer did (every 10 s from the last start)."""
    rate, seconds = 300, (20 if quick else 60)
    runs = {"follower": _freshness(ROOT, rate, seconds, timer=False)}
    if before is not None:
        runs = {"timer every 10 s": _freshness(before.resolve(), rate, seconds, timer=True), **runs}
    text = table(
        f"Tracking freshness: status=sent line written -> row found by message tracking, "
        f"{rate} messages/s for {seconds} s",
        ["ingestion", "messages", "p50 s", "p99 s", "max s", "not seen", "ingestion CPU s"],
        [
            [
                name,
                run["messages"],
                f"{run['p50_s']:.2f}",
                f"{run['p99_s']:.2f}",
                f"{run['max_s']:.2f}",
                run["not_seen"],
                f"{run['ingestion_cpu_s']:.1f}",
            ]
            for name, run in runs.items()
        ],
    )
    for name, run in runs.items():
        text += f"\n{name}: load average (1/5/15 min) after its run: {run['load_average_after']}"
    chart = svg_bars(
        "Tracking freshness",
        ["p50", "p99", "max"],
        {name: [run["p50_s"], run["p99_s"], run["max_s"]] for name, run in runs.items()},
        "s",
    )
    save("freshness", {"rate_per_s": rate, "seconds": seconds, "runs": runs}, chart, text)


def _freshness(checkout: Path, rate: int, seconds: int, timer: bool) -> dict[str, Any]:
    from tests.pgcluster import PostgresCluster

    total = rate * seconds
    cluster = PostgresCluster(durable=True).start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    log, state = workdir / "postfix.log", workdir / "state"
    log.touch()
    dsn = cluster.create_database("bench_freshness")
    _migrate(checkout, dsn, log, state)
    env = _env(checkout, dsn, log, state)
    os.environ.update({key: env[key] for key in ("DATABASE_URL", "STATE_DIR", "PICCOLO_CONF")})
    command = [sys.executable, "-m", "app.cli", "ingest-logs"]
    stop = threading.Event()

    def old_timer() -> None:
        # The old unit: a run every 10 s counted from the last start, never two at once.
        while not stop.is_set():
            started = time.monotonic()
            subprocess.run(command, cwd=checkout, env=env, capture_output=True, check=False)
            stop.wait(max(0.0, 10 - (time.monotonic() - started)))

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    if timer:
        follower = None
        driver = threading.Thread(target=old_timer)
        driver.start()
    else:
        follower = subprocess.Popen(
            [*command, "--follow"], cwd=checkout, env=env, stderr=subprocess.PIPE, text=True
        )
    written: dict[str, float] = {}  # queue id -> when its lines were in the file
    order: list[str] = []  # queue ids in the order they were written
    seen: dict[str, float] = {}  # queue id -> when message tracking first showed it

    def writer(first: int, count: int) -> None:
        # One write per 10 ms tick with the messages due by then, each stamped when it is
        # handed to the file (the "sent" line's moment as Postfix would log it).
        handle = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            started = time.time()
            number = first
            while number < first + count:
                due = min(first + count, first + int((time.time() - started) * rate) + 1)
                chunk, qids = [], []
                for n in range(number, due):
                    text, qid = _message_lines(n, time.time())
                    chunk.append(text)
                    qids.append(qid)
                os.write(handle, "".join(chunk).encode())
                now = time.time()
                written.update((qid, now) for qid in qids)
                order.extend(qids)
                number = due
                time.sleep(0.01)
        finally:
            os.close(handle)

    async def observe(first: int, count: int) -> None:
        """Run the writer and poll message tracking until every message showed (or 30 s
        after the last was written). Each poll asks for the sender's rows since the oldest
        message not seen yet (less a second: log stamps have whole seconds), newest first,
        as the tracking page does."""
        from app import reports

        thread = threading.Thread(target=writer, args=(first, count))
        thread.start()
        oldest = len(order)
        deadline = None
        while oldest < len(order) or thread.is_alive():
            if not thread.is_alive():
                deadline = deadline or time.time() + 30
                if time.time() > deadline:
                    break
            if oldest < len(order):
                since = dt.datetime.fromtimestamp(written[order[oldest]] - 1.5, dt.UTC)
                rows = await reports.search_messages(sender=SENDER, since=since, limit=10_000)
                now = time.time()
                for row in rows:
                    seen.setdefault(row["queue_id"], now)
                while oldest < len(order) and order[oldest] in seen:
                    oldest += 1
            await asyncio.sleep(0.02)
        thread.join()

    async def run() -> None:
        from app.db import pool
        from app.piccolo_conf import DB

        await _wait_for_cursor(dsn)  # the ingestion is up once it has made its cursor row
        DB.config["dsn"] = dsn  # read at import, and each run has its own cluster
        await pool.start_for_pages(min_size=1, max_size=2)  # the search, as the web app runs it
        try:
            # A second of traffic first, not counted: the ingestion runs for days, its first
            # batch (new session, cold caches) is no sample of that.
            await observe(0, rate)
            for qid in order:
                written.pop(qid), seen.pop(qid, None)
            order.clear()
            await observe(rate, total)
        finally:
            await DB.close_connection_pool()

    try:
        asyncio.run(run())
    finally:
        stop.set()
        if follower is not None:
            follower.terminate()
            follower.communicate(timeout=60)
        else:
            driver.join()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cluster.stop()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    delays = sorted(seen[qid] - written[qid] for qid in seen if qid in written)
    first = min(written.values())
    # When were the slowest ones written: in one stall, or spread over the run?
    worst = sorted(
        ((seen[qid] - written[qid], written[qid] - first) for qid in seen if qid in written),
        reverse=True,
    )[:20]
    return {
        "checkout": str(checkout),
        "messages": total,
        "p50_s": _percentile(delays, 0.50),
        "p99_s": _percentile(delays, 0.99),
        "max_s": delays[-1],
        "not_seen": total - len(delays),
        "worst_delay_s_and_written_at_s": [[round(d, 3), round(w, 2)] for d, w in worst],
        # The ingestion's processes over the whole run, their starts included.
        "ingestion_cpu_s": after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime,
        "load_average_after": _load(),
    }


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_for_cursor(dsn: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        for _ in range(600):
            if await connection.fetchval("SELECT count(*) FROM log_cursors"):
                return
            await asyncio.sleep(0.1)
        sys.exit("the follower made no cursor row in 60 s")
    finally:
        await connection.close()


if __name__ == "__main__" and sys.argv[1:] == ["once"]:
    once()
