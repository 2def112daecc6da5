"""The `retention` part of scripts/bench: the oldest 7 of 30 days of mail logs go, by dropping
day partitions (the retention job now) against batched DELETE of the same rows from plain tables
(the job before), on fresh copies of the same data, in alternating runs.

The data is made once (scripts/bench_gui.py's generator) in a migrated database, one partition
per day; a copy then gets the layout before day partitions: plain log tables with the same rows,
indexes, primary key (id) and log_totals triggers. Each run works on its own copy of one of the
two (CREATE DATABASE ... TEMPLATE), in the order A B B A per round, so that a machine getting
busier or quieter weighs on both alike; medians are reported. After each retention run its
VACUUM is timed as well: the work DELETE leaves to autovacuum.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
from bench import save, svg_bars, table
from bench_gui import Sizes, cli, generate, node_env

DAYS = 30
GONE_DAYS = 7
ROUNDS = 2  # of A B B A
BATCH = 5000  # the retention job's batch size
TABLES = ("mail_logs", "rejection_logs")
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
        from app.jobs import retention

        parted_dsn = cluster.create_database("parted")
        cli(node_env(parted_dsn, workdir), "migrate")
        # The migration made today's partition and the week ahead; the retention job, run
        # daily, would have made those of the days before.
        today = retention.utc_day(dt.datetime.now(dt.UTC))
        days = [today - back * dt.timedelta(days=1) for back in range(1, DAYS + 1)]
        asyncio.run(_day_partitions(parted_dsn, days, retention.partition_name))
        print(f"generating {sizes.mail_logs:,} mail_logs rows over {DAYS} days", flush=True)
        started = time.perf_counter()
        setup.update(asyncio.run(generate(parted_dsn, sizes, days=DAYS)))
        setup["data_s"] = time.perf_counter() - started

        plain_dsn = cluster.dsn("plain")
        asyncio.run(copy_database("plain", cluster.dsn(), "parted"))
        asyncio.run(plain_tables(plain_dsn))
        asyncio.run(vacuum_analyze(plain_dsn))

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


async def copy_database(name: str, admin_dsn: str, template: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await conn.close()


async def _day_partitions(
    dsn: str, days: list[dt.datetime], partition_name: Callable[[str, dt.datetime], str]
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for log_table in TABLES:
            for day in days:
                await conn.execute(
                    f"CREATE TABLE {partition_name(log_table, day)} PARTITION OF {log_table} "
                    f"FOR VALUES FROM ('{day.isoformat()}') "
                    f"TO ('{(day + dt.timedelta(days=1)).isoformat()}')"
                )
    finally:
        await conn.close()


# What a log table brings along besides its rows: its indexes (a partitioned table's read
# "ON ONLY", made here on the plain table), its triggers, and the functions whose arguments are
# its row type or an array of it (log_totals' mail_log_totals_apply), which depend on the table.
INDEXES_SQL = (
    "SELECT replace(pg_get_indexdef(indexrelid), ' ON ONLY ', ' ON ') AS sql FROM pg_index "
    "WHERE indrelid = $1::regclass AND NOT indisprimary ORDER BY indexrelid"
)
TRIGGERS_SQL = (
    "SELECT pg_get_triggerdef(oid) AS sql FROM pg_trigger "
    "WHERE tgrelid = $1::regclass AND NOT tgisinternal ORDER BY oid"
)
FUNCTIONS_SQL = (
    "SELECT p.oid::regprocedure::text AS signature, pg_get_functiondef(p.oid) AS sql "
    "FROM pg_proc AS p JOIN pg_type AS t ON t.typrelid = $1::regclass "
    "WHERE t.oid = ANY(p.proargtypes::oid[]) OR t.typarray = ANY(p.proargtypes::oid[]) "
    "ORDER BY p.oid"
)


async def plain_tables(dsn: str) -> None:
    """The log tables as they were before day partitions, made from the partitioned ones: a
    plain table LIKE each gets every row (with no trigger yet: log_totals counts them
    already), the id sequence and the name; then the primary key (id), the indexes, the
    functions that take its row type and the triggers, from the definitions the database gave
    for the partitioned table, so that the batched DELETE keeps log_totals right as it did."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for log_table in TABLES:
                indexes = [row["sql"] for row in await conn.fetch(INDEXES_SQL, log_table)]
                triggers = [row["sql"] for row in await conn.fetch(TRIGGERS_SQL, log_table)]
                functions = await conn.fetch(FUNCTIONS_SQL, log_table)
                sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'id')", log_table)
                # Nothing writes to the table in this transaction until they are back.
                for function in functions:
                    await conn.execute(f"DROP FUNCTION {function['signature']}")
                await conn.execute(f"ALTER TABLE {log_table} RENAME TO {log_table}_parted")
                await conn.execute(
                    f"CREATE TABLE {log_table} (LIKE {log_table}_parted INCLUDING DEFAULTS "
                    "INCLUDING CONSTRAINTS INCLUDING STORAGE)"
                )
                await conn.execute(f"INSERT INTO {log_table} SELECT * FROM {log_table}_parted")  # noqa: S608
                await conn.execute(f"ALTER SEQUENCE {sequence} OWNED BY {log_table}.id")
                await conn.execute(f"DROP TABLE {log_table}_parted")
                await conn.execute(f"ALTER TABLE {log_table} ADD PRIMARY KEY (id)")
                for sql in [*indexes, *(function["sql"] for function in functions), *triggers]:
                    await conn.execute(sql)
    finally:
        await conn.close()


async def vacuum_analyze(dsn: str) -> None:
    # New tables: autovacuum would long have done this on a running node.
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
    text += f"\n\ndata made in {setup['data_s']:.0f} s"
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
