"""The search for one queue ID or one Message-ID runs through a function that keeps its plan
(migration 2026-12-07T02:00); it must answer exactly what the general search answers."""

from __future__ import annotations

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
LONG_AGO = NOW - dt.timedelta(days=365)


@pytest.fixture
async def logged(settings: Settings) -> None:
    """Over ten days in their day partitions: 40 messages of 1 to 7 rows each (deferrals, then
    an outcome), two of them sharing one Message-ID, some rows at the same second."""
    await retention.run_once(settings)
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        await conn.execute(
            "INSERT INTO mail_logs (at, node_id, queue_id, message_id, sender, recipient, "
            "status) SELECT $1::timestamptz - make_interval(hours => m * 6 - k / 2), 'a', "
            "'Q' || m, CASE WHEN m = 7 THEN 'shared@test' ELSE m || '@test' END, "
            "'app@example.com', 'r' || k % 2 || '@dest.example', "
            "CASE WHEN k = m % 7 THEN 'sent' ELSE 'deferred' END "
            "FROM generate_series(0, 39) AS m, generate_series(0, 6) AS k WHERE k <= m % 7",
            NOW,
        )
        await conn.execute("UPDATE mail_logs SET message_id = 'shared@test' WHERE queue_id = 'Q21'")
    finally:
        await conn.close()
    await pool.start_for_pages(min_size=1, max_size=1)  # one connection: its plan is reused


@pytest.fixture(autouse=True)
async def closed_pool() -> AsyncIterator[None]:
    yield
    if MailLog._meta.db.pool is not None:
        await MailLog._meta.db.close_connection_pool()


@pytest.mark.parametrize("field", ["queue_id", "message_id"])
async def test_a_lookup_answers_what_the_general_search_answers(logged: None, field: str) -> None:
    values = ["Q6", "Q13", "Q21", "Q0"] if field == "queue_id" else ["shared@test", "6@test"]
    # More runs than PostgreSQL's five before it keeps a generic plan.
    for _ in range(3):
        for value in values:
            for limit, offset in ((50, 0), (2, 0), (2, 2), (3, 5)):
                found = await reports.search_messages(**{field: value}, limit=limit, offset=offset)
                # `since` takes the general path, with the same rows.
                general = await reports.search_messages(
                    **{field: value}, since=LONG_AGO, limit=limit, offset=offset
                )
                assert found == general, (value, limit, offset)
    everything = await reports.search_messages(**{field: values[0]}, limit=50)
    assert everything and all(row[field] == values[0] for row in everything)
    assert [row["at"] for row in everything] == sorted(
        (row["at"] for row in everything), reverse=True
    )


def test_only_a_search_for_one_message_newest_first_is_a_lookup() -> None:
    def lookup(**search: object) -> tuple[str, str] | None:
        given: dict[str, object] = {
            "sender": "", "recipient": "", "queue_id": "", "message_id": "", "since": None,
            "until": None, "sort": "at", "descending": True,
        } | search  # fmt: skip
        return reports._one_message(**given)  # type: ignore[arg-type]

    assert lookup(queue_id=" Q1 ") == ("mail_logs_of_queue_id", "Q1")
    assert lookup(message_id="<m@x>") == ("mail_logs_of_message_id", "<m@x>")
    assert lookup(queue_id="Q1", message_id="<m@x>") is None
    assert lookup(queue_id="Q1", sender="a@b.example") is None
    assert lookup(queue_id="Q1", recipient="@b.example") is None
    assert lookup(queue_id="Q1", since=NOW) is None
    assert lookup(queue_id="Q1", until=NOW) is None
    assert lookup(queue_id="Q1", sort="recipient") is None
    assert lookup(queue_id="Q1", descending=False) is None
    assert lookup() is None
