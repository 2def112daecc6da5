"""The `gui-layouts` part of scripts/bench: the GUI bench's pages on the same data in day
partitions (the layout now) and in plain tables (the layout before), side by side in one run.

The data is made once (scripts/bench_gui.py's generator) in day partitions; a copy of that
database (CREATE DATABASE ... TEMPLATE) gets plain tables (scripts/bench_retention.py's
conversion), then VACUUM ANALYZE. One server per database; per page the same logged-in clients
load it on each layout in the order A B B A, so that a machine getting busier or quieter weighs
on both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from pathlib import Path

from bench import save, svg_bars, table
from bench_gui import (
    Sizes,
    generate,
    node_env,
    pages,
    ready_database,
    search_targets,
    serving,
    side_by_side_new_users,
    terminated,
)
from bench_retention import copy_database, plain_tables, vacuum_analyze

LAYOUTS = {"parted": "day partitions (now)", "plain": "plain tables (before)"}


def bench_gui_layouts(quick: bool) -> None:
    from tests.pgcluster import PostgresCluster

    signal.signal(signal.SIGTERM, terminated)
    sizes = Sizes.for_run(quick)
    workdir = Path(tempfile.mkdtemp(prefix="bench-layouts-"))
    for layout in LAYOUTS:
        (workdir / layout).mkdir()
    cluster = PostgresCluster()
    try:
        cluster.start()
        dsn = {"parted": cluster.create_database("bench_gui")}
        env = {"parted": node_env(dsn["parted"], workdir / "parted")}
        print(f"generating {sizes.mail_logs:,} mail_logs rows", flush=True)
        made = ready_database(env["parted"], lambda: generate(dsn["parted"], sizes))
        print(f"  data made in {made['total_s']:.0f} s", flush=True)
        started = time.perf_counter()
        asyncio.run(copy_database("bench_plain", cluster.dsn(), "bench_gui"))
        dsn["plain"] = cluster.dsn("bench_plain")
        asyncio.run(plain_tables(dsn["plain"]))
        asyncio.run(vacuum_analyze(dsn["plain"]))
        env["plain"] = node_env(dsn["plain"], workdir / "plain")
        print(f"  plain copy made in {time.perf_counter() - started:.0f} s", flush=True)
        targets = asyncio.run(search_targets(dsn["parted"]))
        measured = pages(targets)
        with contextlib.ExitStack() as stack:
            servers = {
                layout: stack.enter_context(serving(env[layout], workdir / layout))
                for layout in LAYOUTS
            }
            results = asyncio.run(side_by_side_new_users(servers, measured, sizes))
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [
        [
            r["page"],
            f"{r['plain']['p50_ms']:.0f}",
            f"{r['plain']['p95_ms']:.0f}",
            f"{r['parted']['p50_ms']:.0f}",
            f"{r['parted']['p95_ms']:.0f}",
            f"{r['parted']['p95_ms'] / r['plain']['p95_ms']:.2f}",
        ]
        for r in results
    ]
    text = table(
        f"GUI pages with {sizes.mail_logs:,} mail_logs rows in plain tables and in day "
        f"partitions, {sizes.clients} clients, each page on each layout in the order A B B A "
        f"twice ({sizes.requests} requests per page and layout)",
        ["page", "plain p50 ms", "plain p95 ms", "partitions p50 ms", "partitions p95 ms",
         "p95 partitions / plain"],
        rows,
    )  # fmt: skip
    chart = svg_bars(
        f"GUI page p95, {sizes.mail_logs:,} mail_logs rows, plain tables and day partitions",
        [r["label"] for r in results],
        {LAYOUTS[layout]: [r[layout]["p95_ms"] for r in results] for layout in LAYOUTS},
        "ms",
    )
    save("gui-layouts", {"targets": targets, "pages": results}, chart, text)
