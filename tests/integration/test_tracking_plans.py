"""A tracking search takes the index of the address it looks for, however it is planned.

A newest-first search can also be answered by walking each day's (at) index backwards,
filtering rows until a page is full; for an application that stopped sending days ago that
reads every row logged after its last one. PostgreSQL takes that walk with its default costs: in
the generic plan it keeps for a statement run several times on one connection (made without
the searched value) and, in the day the application stopped, in a plan made for the address
too. These tests make every connection use one kind of plan and count what the (at) indexes
hand out during the app's own search, on the web app's connections (app.db.pool.PAGE_SETTINGS),
against the same statement run plainly (the control). A search on one field takes the function
mail_logs_newest, which keeps a plan of its own; one with a time window too, the general way.
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
# The statements of the searches, for the controls: {column} is sender or recipient.
DOMAIN_SEARCH = (
    "SELECT * FROM mail_logs WHERE lower(split_part({column}, '@', -1)) = $1 "
    "AND {column} LIKE '%@%' ORDER BY at DESC, id DESC LIMIT 51"
)
ADDRESS_SEARCH = "SELECT * FROM mail_logs WHERE {column} = $1 ORDER BY at DESC, id DESC LIMIT 51"
# What the stopped application's rows hold, and how the app's search and the control name it.
STOPPED_ROWS = {"sender": "batch@old.example", "recipient": "batch@old-partner.example"}
SEARCHES = {
    "sender address": ("sender", "batch@old.example", ADDRESS_SEARCH, "batch@old.example"),
    "sender domain": ("sender", "@old.example", DOMAIN_SEARCH, "old.example"),
    "recipient address": (
        "recipient",
        "batch@old-partner.example",
        ADDRESS_SEARCH,
        "batch@old-partner.example",
    ),
    "recipient domain": ("recipient", "@old-partner.example", DOMAIN_SEARCH, "old-partner.example"),
}


@pytest.fixture
async def seeded(settings: Settings) -> None:
    """Seven busy applications every day, all to one recipient, and the stopped one to its
    partner, written in the order they were logged, in day partitions (the retention job
    makes those of the retention window). The dashboard's totals triggers are off for the
    insert: nothing here reads log_totals."""
    assert settings.retention_days > DAYS
    await retention.run_once(settings)
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "INSERT INTO mail_logs (at, node_id, queue_id, message_id, sender, recipient, "
            "status, size) SELECT at, 'a', 'Q' || n, n || '@log', sender, recipient, "
            "'sent', 1000 FROM ("
            " SELECT $1::timestamptz - (n || ' seconds')::interval * $2::float8 AS at, n,"
            "  'app' || n % 7 || '@busy.example' AS sender, 'r@dest.example' AS recipient"
            " FROM generate_series(1, $3) AS n"
            " UNION ALL"
            " SELECT $4::timestamptz + (n * 15 || ' seconds')::interval, -n, $5, $6"
            " FROM generate_series(0, 499) AS n"
            ") AS logged ORDER BY at",
            NOW,
            86400 / BUSY_PER_DAY,
            DAYS * BUSY_PER_DAY,
            STOPPED,
            STOPPED_ROWS["sender"],
            STOPPED_ROWS["recipient"],
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


async def check_reads_its_own_index(
    plans: str, search: str, allowed: int = 100, **window: dt.datetime
) -> None:
    """The app's search for the stopped application (`search` in SEARCHES, within `window`)
    finds its newest rows and reads fewer than `allowed` (at)-index entries, where the control
    reads the rows logged after its last one: in every day since (generic plan) or in its day
    (custom plan)."""
    column, value, statement, control_value = SEARCHES[search]
    control = await control_reads(statement.format(column=column), control_value)
    before = await at_index_reads()
    for _ in range(8):  # more runs than PostgreSQL's five before a generic plan
        found = await reports.search_messages(**{column: value}, **window, limit=51)
    # A pooled backend that stays idle reports its counts only after seconds; one that ends
    # reports them at once.
    await MailLog._meta.db.close_connection_pool()
    await pool.start_for_pages(min_size=1, max_size=2)
    searched = await at_index_reads() - before
    assert [row[column] for row in found] == [STOPPED_ROWS[column]] * 51
    assert found[0]["at"] == LAST_OLD
    assert control > (10 if plans == "force_generic_plan" else 0.5) * BUSY_PER_DAY
    assert searched < allowed, (searched, control)


# mail_logs_newest keeps the plan it makes whatever the database's default; the generic one is
# the one to fear.
@pytest.mark.parametrize("plans", ["force_generic_plan"], indirect=True)
@pytest.mark.parametrize("search", sorted(SEARCHES))
async def test_a_search_on_one_field_reads_its_own_index(plans: str, search: str) -> None:
    await check_reads_its_own_index(plans, search)


# A time window (or a second field, or another order) takes the general way.
@pytest.mark.parametrize("search", ["sender address", "sender domain"])
async def test_a_search_in_a_time_window_reads_its_own_index(plans: str, search: str) -> None:
    # A window wider than the log. For a bound beyond its statistics the planner reads the
    # real first entry of each partition's (at) index (13 of them hold rows): 8 plans, 104.
    since = NOW - dt.timedelta(days=365)
    await check_reads_its_own_index(plans, search, allowed=8 * 13 + 100, since=since)
