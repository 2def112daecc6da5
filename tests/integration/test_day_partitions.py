"""mail_logs and rejection_logs partitioned by day, against a real PostgreSQL: a fresh database
has the partitions of the days ahead (UTC days, whatever the database's time zone) and a default
one, every row lands in the partition of its UTC day or else in the default one, and ingestion
keeps every row when no partition exists for its day."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import NamedTuple

import asyncpg
import pytest

from app.db.tables import MailLog, RejectionLog
from app.jobs import ingest, retention
from tests.integration.test_cli import run
from tests.integration.test_log_totals import KEPT, RECOUNT, table
from tests.loggen import traffic

NOW = dt.datetime.now(dt.UTC)
TODAY = retention.utc_day(NOW)
DAY = dt.timedelta(days=1)
TABLES = ("mail_logs", "rejection_logs")
# A zone whose date is not UTC's at the moment the tests run (UTC+14 from 10:00 UTC on,
# UTC-11 before), so that partitions cut at local midnights would show.
ZONE = "Pacific/Kiritimati" if NOW.hour >= 10 else "Pacific/Pago_Pago"


class Fresh(NamedTuple):
    connection: asyncpg.Connection
    today: dt.datetime  # the UTC day the migration ran on


@pytest.fixture(scope="module")
async def fresh(pg_cluster) -> AsyncIterator[Fresh]:
    """A database in ZONE that `mailrelay migrate` made, and a connection to it."""
    name = "partitions_fresh"
    pg_cluster.drop_database(name)
    url = pg_cluster.create_database(name)
    admin = await asyncpg.connect(url)
    await admin.execute(f"ALTER DATABASE {name} SET timezone TO '{ZONE}'")
    await admin.close()
    today = retention.utc_day(dt.datetime.now(dt.UTC))
    result = run("migrate", env={"DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    # A run that crossed midnight UTC: its partitions start a day later.
    assert retention.utc_day(dt.datetime.now(dt.UTC)) == today, "migrated at midnight: run again"
    connection = await asyncpg.connect(url)
    assert await connection.fetchval("SHOW timezone") == ZONE
    yield Fresh(connection, today)
    await connection.close()
    pg_cluster.drop_database(name)


async def test_a_fresh_database_has_a_partition_per_utc_day_ahead_and_a_default_one(fresh):
    db, today = fresh
    for name in TABLES:
        shape = await db.fetchrow(
            "SELECT relkind::text AS kind, (SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = c.oid AND contype = 'p') AS pkey FROM pg_class AS c"
            " WHERE oid = $1::regclass",
            name,
        )
        assert dict(shape) == {"kind": "p", "pkey": "PRIMARY KEY (id, at)"}
        partitions = await db.fetch(
            "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
            " WHERE inhparent = $1::regclass",
            name,
        )
        assert {row["name"] for row in partitions} == {
            *(retention.partition_name(name, today + i * DAY) for i in range(8)),
            f"{name}_default",
        }


async def test_each_row_lands_in_the_partition_of_its_utc_day_or_else_the_default_one(fresh):
    db, today = fresh
    last = today + 7 * DAY
    just_before = dt.timedelta(microseconds=1)
    places = {
        today: retention.partition_name("{}", today),
        today + DAY - just_before: retention.partition_name("{}", today),
        today + DAY: retention.partition_name("{}", today + DAY),
        last + dt.timedelta(hours=23): retention.partition_name("{}", last),
        # Before the first partition and after the last: kept all the same.
        today - just_before: "{}_default",
        last + DAY: "{}_default",
        today - 400 * DAY: "{}_default",
    }
    for n, at in enumerate(places):
        await db.execute(
            "INSERT INTO mail_logs (at, node_id, queue_id, status) VALUES ($1, 'a', $2, 'sent')",
            at,
            f"Q{n}",
        )
        await db.execute("INSERT INTO rejection_logs (at, node_id, code) VALUES ($1, 'a', 554)", at)
    for name in TABLES:
        rows = await db.fetch(f"SELECT at, tableoid::regclass::text AS part FROM {name}")  # noqa: S608
        assert {row["at"]: row["part"] for row in rows} == {
            at: part.format(name) for at, part in places.items()
        }
    # The totals count rows in every partition, the default one included.
    kept, recount = await db.fetch(KEPT), await db.fetch(RECOUNT)
    assert len(kept) == len(places)
    assert sorted(map(tuple, kept)) == sorted(map(tuple, recount))


async def test_ingestion_keeps_every_row_when_no_partition_exists_for_its_day(settings, tmp_path):
    for name in ("mail_logs", "rejection_logs"):
        for back in range(-1, 3):
            day = TODAY - back * DAY
            await MailLog.raw(f"DROP TABLE IF EXISTS {retention.partition_name(name, day)}")
    log = traffic(0, 40)
    path = tmp_path / "postfix.log"
    path.write_text(log.text())

    result = await ingest.run_once(dataclasses.replace(settings, postfix_log_file=path))

    assert result.mail_rows + result.rejection_rows == sum(log.expect.values())
    assert await MailLog.count() == result.mail_rows
    assert await RejectionLog.count() == result.rejection_rows
    placed = await MailLog.raw("SELECT DISTINCT tableoid::regclass::text AS part FROM mail_logs")
    assert placed == [{"part": "mail_logs_default"}]
    rows = await MailLog.select().order_by(MailLog.id)

    # The next retention run gives those days their partitions and moves the rows in.
    await retention.run_once(settings)
    assert await MailLog.select().order_by(MailLog.id) == rows
    placed = await MailLog.raw("SELECT DISTINCT tableoid::regclass::text AS part FROM mail_logs")
    assert {row["part"] for row in placed} == {
        retention.partition_name("mail_logs", retention.utc_day(row["at"])) for row in rows
    }
    assert await table(KEPT) == await table(RECOUNT)
