"""mail_logs and rejection_logs partitioned by day, against a real PostgreSQL: the migration
turns plain tables with rows over many days into partitioned ones (and back) losing nothing,
the dashboard and tracking queries answer the same, and ingestion keeps every row when no
partition exists for its day."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from piccolo.apps.migrations.commands.backwards import run_backwards
from piccolo.apps.migrations.commands.forwards import run_forwards

from app import reports
from app.db.tables import MailLog, RejectionLog
from app.jobs import ingest, retention
from tests.integration.test_log_totals import KEPT, RECOUNT, table
from tests.loggen import traffic

MIGRATION = "2026-12-05T11:00:00:000000"
NOW = dt.datetime.now(dt.UTC)
TODAY = retention.utc_day(NOW)
DAY = dt.timedelta(days=1)
STATUSES = ("sent", "sent", "deferred", "bounced", "expired")


async def seed_days(days: int) -> None:
    """Messages on each of `days` days back (and today), two to three rows each, some of them
    delivered days after they came, from a few senders to a few domains; rejects besides."""
    rows, rejects = [], []
    for back in range(days + 1):
        for n in range(6):
            at = NOW - back * DAY - dt.timedelta(hours=n * 3, minutes=n)
            for r in range(2 + n % 2):
                rows.append(
                    MailLog(
                        at=at + dt.timedelta(days=r if n == 5 else 0, minutes=r),
                        node_id="a",
                        queue_id=f"Q{back}x{n}",
                        message_id=f"{back}.{n}@app.example",
                        sender=f"s{n % 3}@app{n % 2}.example",
                        recipient=f"r{r}@dest{n % 4}.example",
                        status=STATUSES[(back + n + r) % 5],
                        size=1000 + n,
                    )
                )
            rejects.append(RejectionLog(at=at, node_id="a", client=f"c{back}.{n}", code=554))
    await MailLog.insert(*rows)
    await RejectionLog.insert(*rejects)


async def everything() -> dict[str, Any]:
    """The rows, the totals, and what the GUI shows from them."""
    return {
        "mail_logs": await MailLog.select().order_by(MailLog.id),
        "rejection_logs": await RejectionLog.select().order_by(RejectionLog.id),
        "log_totals": await table(KEPT),
        "tiles": await reports.kpi_tiles(14),
        "traffic": await reports.hourly_traffic(),
        "rejects": await reports.recent_rejects(),
        "by sender": await reports.search_messages(sender="s1@app1.example"),
        "by recipient domain": await reports.search_messages(recipient="@dest2.example"),
        "by queue ID": await reports.lifecycle("Q3x5"),
        "since": await reports.search_messages(since=NOW - 4 * DAY, until=NOW - 2 * DAY),
    }


async def shape(name: str) -> dict[str, Any]:
    rows = await MailLog.raw(
        "SELECT c.relkind::text AS kind, "
        " (SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "  WHERE conrelid = c.oid AND contype = 'p') AS pkey, "
        # ORDER BY the name itself: `ORDER BY 1` inside an aggregate sorts by the constant 1.
        " (SELECT array_agg(indexrelid::regclass::text ORDER BY indexrelid::regclass::text)"
        "  FROM pg_index "
        "  WHERE indrelid = c.oid) AS indexes, "
        " (SELECT array_agg(tgname::text ORDER BY tgname::text) FROM pg_trigger "
        "  WHERE tgrelid = c.oid AND NOT tgisinternal) AS triggers, "
        " pg_get_serial_sequence({}, 'id') AS sequence "
        "FROM pg_class AS c WHERE c.oid = {}::regclass",
        name,
        name,
    )
    return rows[0]


async def test_the_migration_converts_rows_over_many_days_and_back_losing_nothing():
    await seed_days(20)
    partitioned = {name: await shape(name) for name in ("mail_logs", "rejection_logs")}
    assert partitioned["mail_logs"]["kind"] == "p"
    assert partitioned["mail_logs"]["pkey"] == "PRIMARY KEY (id, at)"
    start = await everything()
    assert len(start["mail_logs"]) == 21 * 15 and len(start["rejection_logs"]) == 21 * 6
    assert start["log_totals"] == await table(RECOUNT)
    assert start["by sender"] and start["by recipient domain"] and start["since"]
    try:
        back = await run_backwards(app_name="mailrelay", migration_id=MIGRATION, auto_agree=True)
        assert back.success, back.message
        plain = await shape("mail_logs")
        assert plain["kind"] == "r" and plain["pkey"] == "PRIMARY KEY (id)"
        assert await everything() == start
    finally:
        forwards = await run_forwards(app_name="mailrelay")
    assert forwards.success, forwards.message

    # Everything as it was, now in one partition per day: counts, ids, every value.
    assert await everything() == start
    assert {name: await shape(name) for name in partitioned} == partitioned
    days = {retention.utc_day(row["at"]) for row in start["mail_logs"]}
    placed = await MailLog.raw(
        "SELECT tableoid::regclass::text AS part, count(*) AS n FROM mail_logs GROUP BY 1"
    )
    assert {row["part"] for row in placed} == {
        retention.partition_name("mail_logs", day) for day in days
    }
    # The sequence counts on past the moved ids; the triggers count new rows again.
    await MailLog.insert(MailLog(at=NOW, node_id="a", queue_id="after", status="sent"))
    new = await MailLog.select(MailLog.id).where(MailLog.queue_id == "after").first()
    assert new["id"] > max(row["id"] for row in start["mail_logs"])
    assert await table(KEPT) == await table(RECOUNT)


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
