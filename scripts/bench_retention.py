"""The `retention` part of scripts/bench: the oldest 7 of 30 days of mail logs go, by dropping
day partitions (the retention job now) against batched DELETE of the same rows from plain tables
(the job before), on fresh copies of the same data, in alternating runs.

The data is made once (scripts/bench_gui.py's generator) in plain tables, the layout before the
day-partition migration; a copy then gets that migration, which is timed too. Each run works on
its own copy of one of the two (CREATE DATABASE ... TEMPLATE), in the order A B B A per round,
so that a machine getting busier or quieter weighs on both alike; medians are reported. After
each retention run its VACUUM is timed as well: the work DELETE leaves to autovacuum.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from bench import ROOT, save, svg_bars, table
from bench_gui import Sizes, cli, generate, node_env

DAYS = 30
GONE_DAYS = 7
ROUNDS = 2  # of A B B A
BATCH = 5000  # the retention job's batch size
PICCOLO = [sys.executable, "-m", "piccolo.main"]
RUN_DB = "bench_run"  # every run's copy has this name: the app's engine reads one DSN


def _sizes(quick: bool) -> Sizes:
    rows = 500_000 if quick else 10_000_000
    return Sizes(rows, rejection_logs=rows // 20, audit_log=1000, clients=0, requests=0)


async def _copy(admin_dsn: str, template: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {RUN_DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {RUN_DB} TEMPLATE {template}")
        await conn.execute("CHECKPOINT")  # the copy's writes are not the next run's to pay
    finally:
        await conn.close()


async def _run(variant: str, retention_days: int) -> dict[str, float]:
    """One retention of the oldest days on the run database: the job's own code."""
    import datetime as dt
    import logging

    from app.jobs import retention
    from app.piccolo_conf import DB
    from app.settings import load_settings

    logging.getLogger("mailrelay.retention").setLevel(logging.WARNING)
    settings = load_settings()
    await DB.start_connection_pool(min_size=1, max_size=2)
    try:
        started = time.perf_counter()
        if variant == "drop":
            result = await retention.run_once(settings, batch_size=BATCH)
            gone = result.deleted["mail_logs"] + result.deleted["rejection_logs"]
        else:
            # The job before day partitions: every old row deleted in batches, the log_totals
            # triggers keeping the dashboard's figures right batch by batch.
            kept_from = retention.first_kept_day(dt.datetime.now(dt.UTC), retention_days)
            result = retention.RetentionResult(cutoff=kept_from)
            for rule in retention.RULES[:2]:
                await retention.delete_in_batches(rule, kept_from, BATCH, result)
            gone = result.total
        seconds = time.perf_counter() - started
    finally:
        await DB.close_connection_pool()
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        started = time.perf_counter()
        await conn.execute("VACUUM mail_logs, rejection_logs")
        vacuum = time.perf_counter() - started
    finally:
        await conn.close()
    return {"seconds": seconds, "vacuum_s": vacuum, "rows_gone": gone}


def bench_retention(quick: bool) -> None:
    from tests.pgcluster import PostgresCluster

    sizes = _sizes(quick)
    workdir = Path(tempfile.mkdtemp(prefix="bench-retention-"))
    cluster = PostgresCluster()
    setup: dict[str, float] = {}
    runs: list[dict[str, Any]] = []
    try:
        cluster.start()
        # Before anything imports the app: Piccolo reads DATABASE_URL once.
        os.environ.update(node_env(cluster.dsn(RUN_DB), workdir))
        os.environ["RETENTION_DAYS"] = str(DAYS - GONE_DAYS)
        from app.db.migrations.mailrelay_2026_12_05t11_00_00_day_partitions import ID

        plain_dsn = cluster.create_database("plain")
        env = node_env(plain_dsn, workdir)
        cli(env, "migrate")
        # Back to the layout before day partitions: plain tables, as an installation has them.
        subprocess.run(
            [*PICCOLO, "migrations", "backwards", "mailrelay", ID, "--auto_agree"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        print(f"generating {sizes.mail_logs:,} mail_logs rows over {DAYS} days", flush=True)
        started = time.perf_counter()
        setup.update(asyncio.run(generate(plain_dsn, sizes, days=DAYS)))
        setup["data_s"] = time.perf_counter() - started

        parted_dsn = cluster.dsn("parted")
        asyncio.run(_template("parted", cluster.dsn(), "plain"))
        started = time.perf_counter()
        cli(node_env(parted_dsn, workdir), "migrate")
        setup["migration_s"] = time.perf_counter() - started
        print(f"  day-partition migration: {setup['migration_s']:.1f} s", flush=True)
        asyncio.run(_vacuum_analyze(parted_dsn))

        for _ in range(ROUNDS):
            for variant in ("drop", "delete", "delete", "drop"):
                asyncio.run(_copy(cluster.dsn(), "parted" if variant == "drop" else "plain"))
                result = asyncio.run(_run(variant, DAYS - GONE_DAYS))
                runs.append({"variant": variant, **result})
                print(
                    f"  {variant}: {result['seconds']:.2f} s, vacuum {result['vacuum_s']:.2f} s, "
                    f"{result['rows_gone']:,} rows",
                    flush=True,
                )
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(sizes, setup, runs)


async def _template(name: str, admin_dsn: str, template: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await conn.close()


async def _vacuum_analyze(dsn: str) -> None:
    # The migration's new tables: autovacuum would long have done this on a running node.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE mail_logs, rejection_logs")
    finally:
        await conn.close()


LABELS = {
    "drop": "DROP of day partitions (retention now)",
    "delete": "batched DELETE, plain tables (before)",
}


def report(sizes: Sizes, setup: dict[str, float], runs: list[dict[str, Any]]) -> None:
    summary = {}
    for variant in LABELS:
        mine = [run for run in runs if run["variant"] == variant]
        summary[variant] = {
            "runs": len(mine),
            "median_s": statistics.median(run["seconds"] for run in mine),
            "max_s": max(run["seconds"] for run in mine),
            "vacuum_median_s": statistics.median(run["vacuum_s"] for run in mine),
            "rows_gone": sorted({run["rows_gone"] for run in mine}),
        }
    text = table(
        f"Retention of the oldest {GONE_DAYS} of {DAYS} days: {sizes.mail_logs:,} mail_logs and "
        f"{sizes.rejection_logs:,} rejection_logs rows, runs alternating A B B A on fresh copies",
        ["retention by", "runs", "rows gone", "median s", "max s", "then VACUUM, median s"],
        [
            [
                LABELS[variant],
                s["runs"],
                ", ".join(f"{n:,}" for n in s["rows_gone"]),
                f"{s['median_s']:.2f}",
                f"{s['max_s']:.2f}",
                f"{s['vacuum_median_s']:.2f}",
            ]
            for variant, s in summary.items()
        ],
    )
    text += (
        f"\n\nday-partition migration of these tables: {setup['migration_s']:.1f} s; "
        f"data made in {setup['data_s']:.0f} s"
    )
    data = {
        "rows": {"mail_logs": sizes.mail_logs, "rejection_logs": sizes.rejection_logs},
        "days": DAYS,
        "gone_days": GONE_DAYS,
        "batch": BATCH,
        "setup": setup,
        "runs": runs,
        "summary": summary,
    }
    chart = svg_bars(
        f"Retention of {GONE_DAYS} of {DAYS} days, {sizes.mail_logs:,} mail_logs rows",
        ["retention", "then VACUUM"],
        {LABELS[variant]: [s["median_s"], s["vacuum_median_s"]] for variant, s in summary.items()},
        "s",
    )
    save("retention", data, chart, text)
