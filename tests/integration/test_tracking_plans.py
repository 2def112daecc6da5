"""A tracking search takes the index of the address it looks for, however it is planned.

A newest-first search can also be answered by walking each day's (at) index backwards,
filtering rows until a page is full; for an application that stopped sending days ago that
reads every row logged after its last one. PostgreSQL takes that walk with its default costs: in
the generic plan it keeps for a statement run several times on one connection (made without
the searched value) and, in the day the application stopped, in a plan made for the address
too. These tests make every connection use one kind of plan and count what the (at) indexes
hand out during the app's own search, on the web app's connections (app.db.pool.PAGE_SETTINGS),
against the same statement run plainly (the control).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from app import reports
from app.db import pool
from app.db.tables import MailLog
from app.jobs import retention
from app.settings import Settings

NOW = dt.datetime.now(dt.UTC)
DAYS = 12
BUSY_PER_DAY = 3000
# The application that stopped sent 500 messages early on the day ten days ago (UTC), between
# the busy applications' messages; that day's partition holds their rows after its last one.
STOPPED = NOW.replace(hour=2, minute=0, second=0, microsecond=0) - dt.timedelta(days=10)
LAST_OLD = STOPPED + dt.timedelta(seconds=15 * 499)
# The statements of the two searches, for the controls.
DOMAIN_SEARCH = (
    "SELECT * FROM mail_logs WHERE lower(split_part(sender, '@', -1)) = $1 "
    "AND sender LIKE '%@%' ORDER BY at DESC, id DESC LIMIT 51"
)
ADDRESS_SEARCH = "SELECT * FROM mail_logs WHERE sender = $1 ORDER BY at DESC, id DESC LIMIT 51"


@pytest.fixture
async def seeded(settings: Settings) -> None:
    """Seven busy applications every day, written in the order they were logged, in day
    partitions (the retention job makes those of the retention window). The dashboard's
    totals triggers are off for the insert: nothing here reads log_totals."""
    assert settings.retention_days > DAYS
    await retention.run_once(settings)
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "INSERT INTO mail_logs (at, node_id, queue_id, message_id, sender, recipient, "
            "status, size) SELECT at, 'a', 'Q' || n, n || '@log', sender, 'r@dest.example', "
            "'sent', 1000 FROM ("
            " SELECT $1::timestamptz - (n || ' seconds')::interval * $2::float8 AS at, n,"
            "  'app' || n % 7 || '@busy.example' AS sender FROM generate_series(1, $3) AS n"
            " UNION ALL"
            " SELECT $4::timestamptz + (n * 15 || ' seconds')::interval, -n, 'batch@old.example'"
            " FROM generate_series(0, 499) AS n"
            ") AS logged ORDER BY at",
            NOW,
            86400 / BUSY_PER_DAY,
            DAYS * BUSY_PER_DAY,
            STOPPED,
        )
        await conn.execute("ANALYZE mail_logs")
    finally:
        await conn.close()


async def at_index_reads() -> int:
    """Index entries the mail_logs partitions' (at) indexes handed out so far."""
    await asyncio.sleep(1.5)  # backends report their counts at most once a second when idle
    rows = await MailLog.raw(
        "SELECT coalesce(sum(s.idx_tup_read), 0)::bigint AS n FROM pg_stat_user_indexes AS s "
        "WHERE s.relname LIKE 'mail_logs%' "
        "AND pg_get_indexdef(s.indexrelid) LIKE '%USING btree (at)'"
    )
    return int(rows[0]["n"])


async def control_reads(statement: str, value: str) -> int:
    """(at)-index reads of `statement` run plainly on a new connection."""
    before = await at_index_reads()
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        rows = await conn.fetch(statement, value)
    finally:
        await conn.close()
    assert len(rows) == 51
    return await at_index_reads() - before


@pytest.fixture(params=["force_generic_plan", "force_custom_plan"])
async def plans(request: pytest.FixtureRequest, seeded: None) -> AsyncIterator[str]:
    """Every new connection to the test database plans this way until the test ends, unless
    it says otherwise; the app's searches run on a pool opened as the web app opens its."""
    database = os.environ["DATABASE_URL"].rsplit("/", 1)[-1]
    await MailLog.raw(f"ALTER DATABASE {database} SET plan_cache_mode = {request.param}")
    engine = MailLog._meta.db
    sizes = None
    if engine.pool is not None:
        sizes = engine.pool.get_min_size(), engine.pool.get_max_size()
        await engine.close_connection_pool()
    await pool.start_for_pages(min_size=1, max_size=2)
    try:
        yield request.param
    finally:
        await engine.close_connection_pool()
        await MailLog.raw(f"ALTER DATABASE {database} RESET plan_cache_mode")
        if sizes is not None:
            await pool.start(min_size=sizes[0], max_size=sizes[1])


@pytest.mark.parametrize(
    ("search", "statement", "value"),
    [
        ("@old.example", DOMAIN_SEARCH, "old.example"),
        ("batch@old.example", ADDRESS_SEARCH, "batch@old.example"),
    ],
    ids=["domain", "address"],
)
async def test_a_search_for_a_sender_that_stopped_reads_its_own_index(
    plans: str, search: str, statement: str, value: str
) -> None:
    control = await control_reads(statement, value)
    before = await at_index_reads()
    for _ in range(8):  # more runs than PostgreSQL's five before a generic plan
        found = await reports.search_messages(sender=search, limit=51)
    # A pooled backend that stays idle reports its counts only after seconds; one that ends
    # reports them at once.
    await MailLog._meta.db.close_connection_pool()
    await pool.start_for_pages(min_size=1, max_size=2)
    searched = await at_index_reads() - before
    assert [row["sender"] for row in found] == ["batch@old.example"] * 51
    assert found[0]["at"] == LAST_OLD
    # The control walks the rows logged after the last old one: in every day since (generic
    # plan) or in its day (custom plan).
    assert control > (10 if plans == "force_generic_plan" else 0.5) * BUSY_PER_DAY
    assert searched < 100, (searched, control)
