"""A tracking search is planned for the address it looks for, however often it runs.

PostgreSQL may switch a statement run several times on one connection to a generic plan, made
without the searched value. For a newest-first domain search that plan walks the (at) index of
every day, filtering rows, until it has a page: for an application that stopped sending days
ago, every row since. These tests make PostgreSQL prefer generic plans on every connection and
count what the (at) indexes hand out during the app's own search.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import asyncpg

from app import reports
from app.db.tables import MailLog

NOW = dt.datetime.now(dt.UTC)
DAYS = 12
BUSY_PER_DAY = 3000
# The same statement as the domain search, for the control.
DOMAIN_SEARCH = (
    "SELECT * FROM mail_logs WHERE lower(split_part(sender, '@', -1)) = $1 "
    "AND sender LIKE '%@%' ORDER BY at DESC, id DESC LIMIT 51"
)


async def seed() -> None:
    """A busy application every day; one that stopped sending ten days ago."""
    await MailLog.raw(
        "INSERT INTO mail_logs (at, node_id, queue_id, message_id, sender, recipient, status, "
        "size) SELECT {}::timestamptz - (n || ' seconds')::interval * {}::float8, 'a', "
        "'Q' || n, n || '@busy', 'app@busy.example', 'r@dest.example', 'sent', 1000 "
        "FROM generate_series(1, {}) AS n",
        NOW,
        86400 / BUSY_PER_DAY,
        DAYS * BUSY_PER_DAY,
    )
    await MailLog.raw(
        "INSERT INTO mail_logs (at, node_id, queue_id, message_id, sender, recipient, status, "
        "size) SELECT {}::timestamptz - interval '10 days' - (n || ' minutes')::interval, "
        "'a', 'O' || n, n || '@old', 'batch@old.example', 'r@dest.example', 'sent', 1000 "
        "FROM generate_series(1, 500) AS n",
        NOW,
    )
    await MailLog.raw("ANALYZE mail_logs")


async def at_index_reads() -> int:
    """Index entries the mail_logs partitions' (at) indexes handed out so far."""
    await asyncio.sleep(1.5)  # backends report their counts at most once a second when idle
    rows = await MailLog.raw(
        "SELECT coalesce(sum(s.idx_tup_read), 0)::bigint AS n FROM pg_stat_user_indexes AS s "
        "WHERE s.relname LIKE 'mail_logs%' "
        "AND pg_get_indexdef(s.indexrelid) LIKE '%USING btree (at)'"
    )
    return int(rows[0]["n"])


async def test_a_domain_search_is_planned_for_its_domain_where_generic_plans_are_preferred():
    await seed()
    dsn = os.environ["DATABASE_URL"]
    database = dsn.rsplit("/", 1)[-1]
    await MailLog.raw(f"ALTER DATABASE {database} SET plan_cache_mode = force_generic_plan")
    try:
        # The control: the same statement as a generic plan reads the busy days' rows.
        before = await at_index_reads()
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(DOMAIN_SEARCH, "old.example")
        finally:
            await conn.close()
        assert len(rows) == 51
        generic = await at_index_reads() - before
        assert generic > 10 * BUSY_PER_DAY

        before = await at_index_reads()
        for _ in range(8):  # more runs than PostgreSQL's five before a generic plan
            found = await reports.search_messages(sender="@old.example", limit=51)
        searched = await at_index_reads() - before
    finally:
        await MailLog.raw(f"ALTER DATABASE {database} RESET plan_cache_mode")
    assert [row["sender"] for row in found] == ["batch@old.example"] * 51
    assert found[0]["at"] == max(row["at"] for row in rows)
    assert searched < BUSY_PER_DAY, searched
