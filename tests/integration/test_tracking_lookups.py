"""A search on one field, newest first, runs through mail_logs_newest, a function that keeps
its plans (migration 2026-12-07T04:00); it must answer exactly what the general search
answers, and every other search must take the general way."""

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
    an outcome), from three applications in two domains and one bounce (no sender), to four
    recipients in two domains; two messages share one Message-ID; some rows are logged at the
    same second."""
    await retention.run_once(settings)
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        await conn.execute(
            "INSERT INTO mail_logs (at, node_id, queue_id, message_id, sender, recipient, "
            "status) SELECT $1::timestamptz - make_interval(hours => m * 6 - k / 2), 'a', "
            "'Q' || m, CASE WHEN m = 7 THEN 'shared@test' ELSE m || '@test' END, "
            "CASE WHEN m = 9 THEN '' ELSE 'app' || m % 3 || '@' "
            "  || CASE WHEN m % 4 = 0 THEN 'other.example' ELSE 'example.com' END END, "
            "'r' || k / 2 % 2 || '@dest' || m % 2 || '.example', "
            "CASE WHEN k = m % 7 THEN 'sent' ELSE 'deferred' END "
            "FROM generate_series(0, 39) AS m, generate_series(0, 6) AS k WHERE k <= m % 7",
            NOW,
        )
        await conn.execute("UPDATE mail_logs SET message_id = 'shared@test' WHERE queue_id = 'Q21'")
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
async def closed_pool() -> AsyncIterator[None]:
    yield
    if MailLog._meta.db.pool is not None:
        await MailLog._meta.db.close_connection_pool()


SEARCHES = {
    "sender": ["app1@example.com", " APP2@Example.COM ", "@OTHER.example", "@x.example", "x@y.z"],
    "recipient": ["r1@dest0.example", "@dest1.example", " R0@DEST1.example", "@nowhere.example"],
    "queue_id": ["Q6", "Q13", "Q21", "Q0", "Q99"],
    "message_id": ["shared@test", "6@test"],
}


@pytest.mark.parametrize("field", sorted(SEARCHES))
async def test_a_search_on_one_field_answers_what_the_general_search_answers(
    logged: None, field: str
) -> None:
    # One connection, so that its kept plans serve every call after the first.
    await pool.start_for_pages(min_size=1, max_size=1)
    for value in SEARCHES[field]:
        for limit, offset in ((200, 0), (2, 0), (2, 2), (3, 5), (50, 40)):
            found = await reports.search_messages(**{field: value}, limit=limit, offset=offset)
            # `since` takes the general path, with the same rows.
            general = await reports.search_messages(
                **{field: value}, since=LONG_AGO, limit=limit, offset=offset
            )
            assert found == general, (value, limit, offset)
    for value in SEARCHES[field][:2]:
        everything = await reports.search_messages(**{field: value})
        assert everything, value
        assert [(row["at"], row["id"]) for row in everything] == sorted(
            ((row["at"], row["id"]) for row in everything), reverse=True
        )


@pytest.mark.parametrize(
    ("search", "takes_it"),
    [
        ({"sender": "a@b.example"}, True),
        ({"sender": "@b.example"}, True),
        ({"recipient": " R@B.example"}, True),
        ({"recipient": "@b.example"}, True),
        ({"queue_id": " Q1 "}, True),
        ({"message_id": "<m@x>"}, True),
        ({"queue_id": "Q1", "message_id": "<m@x>"}, False),
        ({"sender": "a@b.example", "recipient": "@b.example"}, False),
        ({"sender": "a@b.example", "since": NOW}, False),
        ({"sender": "a@b.example", "until": NOW}, False),
        ({"sender": "a@b.example", "sort": "recipient"}, False),
        ({"sender": "a@b.example", "descending": False}, False),
        ({"sender": "  "}, False),
        ({}, False),
    ],
)
async def test_only_a_search_on_one_field_newest_first_takes_the_function(
    logged: None, search: dict[str, object], takes_it: bool
) -> None:
    await pool.start_for_pages(min_size=1, max_size=1)
    # The server counts a function's calls where track_functions says so, and shows a
    # transaction its own calls so far.
    async with MailLog._meta.db.transaction():
        await MailLog.raw("SET LOCAL track_functions = 'pl'")
        await reports.search_messages(**search)  # type: ignore[arg-type]
        rows = await MailLog.raw(
            "SELECT coalesce(sum(calls), 0)::bigint AS n FROM pg_stat_xact_user_functions "
            "WHERE funcname = 'mail_logs_newest'"
        )
    assert rows[0]["n"] == (1 if takes_it else 0)


def test_a_search_names_its_fields_as_the_function_does() -> None:
    assert reports._matches(" A@B.Example ", "@C.Example", " Q1 ", "<m@x>") == [
        ("sender", "a@b.example"),
        ("recipient_domain", "c.example"),
        ("queue_id", "Q1"),
        ("message_id", "<m@x>"),
    ]
    assert reports._matches("@b.example", "r@c.example", "", "") == [
        ("sender_domain", "b.example"),
        ("recipient", "r@c.example"),
    ]
    assert reports._matches(" ", "", "  ", "") == []
