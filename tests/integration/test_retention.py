"""Retention against a real PostgreSQL: whole old days of mail logs go as partitions, rows the
default partition holds go in batches, every other growing table loses its old rows and keeps
its new ones, partitions for the days ahead exist, and the dashboard's totals stay exact."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import subprocess
import sys

from app.db.tables import (
    AppUser,
    AuditLog,
    ConfigVersion,
    LogCursor,
    LogMessage,
    MailLog,
    Promotion,
    QueueImport,
    RejectionLog,
    SyncRun,
    UserSession,
    VrrpEvent,
)
from app.jobs import retention
from tests.integration.test_log_totals import (
    KEPT,
    LATEST_KEPT,
    LATEST_RECOUNT,
    RECOUNT,
    latest,
    table,
)

DAY = dt.timedelta(days=1)


async def seed(at: dt.datetime, count: int, tag: str) -> None:
    await MailLog.insert(
        *(
            MailLog(
                at=at,
                node_id="a",
                queue_id=f"{tag}-{i}",
                recipient="r@example.org",
                status=("sent", "deferred", "bounced")[i % 3],
            )
            for i in range(count)
        )
    )
    await RejectionLog.insert(
        *(RejectionLog(at=at, node_id="a", client=f"{tag}-{i}") for i in range(count))
    )
    await LogMessage.insert(
        *(LogMessage(node_id="a", queue_id=f"{tag}-{i}", first_seen_at=at) for i in range(count))
    )


async def remaining(model) -> set[str]:
    """The tags of the rows left."""
    key = "client" if model is RejectionLog else "queue_id"
    return {row[key].split("-")[0] for row in await model.select()}


async def partitions(name: str) -> dict[str, str]:
    """A table's partitions and their bounds, as PostgreSQL states them."""
    rows = await MailLog.raw(
        "SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound "
        "FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = {}::regclass",
        name,
    )
    return {row["name"]: row["bound"] for row in rows}


async def where(model, tag: str) -> set[str]:
    """The partitions that hold the rows of a tag."""
    key = "client" if model is RejectionLog else "queue_id"
    rows = await model.raw(
        f"SELECT DISTINCT tableoid::regclass::text AS part FROM {model._meta.tablename} "  # noqa: S608
        f"WHERE {key} LIKE {{}}",
        f"{tag}-%",
    )
    return {row["part"] for row in rows}


async def test_whole_old_days_go_as_partitions_and_kept_days_stay(settings):
    now = dt.datetime.now(dt.UTC)
    # A run with 30 days makes a partition for each of them (and drops what is older).
    await retention.run_once(dataclasses.replace(settings, retention_days=30))
    settings = dataclasses.replace(settings, retention_days=14)
    kept_from = retention.first_kept_day(now, 14)
    await seed(kept_from - 6 * DAY, 5, "old")
    await seed(kept_from - dt.timedelta(minutes=1), 4, "edge")
    await seed(kept_from + dt.timedelta(minutes=1), 3, "kept")
    await seed(now - dt.timedelta(minutes=5), 7, "new")
    # Older than any partition the 30-day run made: these are in the default partition.
    await seed(now - 45 * DAY, 6, "ancient")
    assert await where(MailLog, "old") == {
        retention.partition_name("mail_logs", kept_from - 6 * DAY)
    }
    assert await where(RejectionLog, "ancient") == {"rejection_logs_default"}
    old_days = {kept_from - i * DAY for i in range(1, 17)}  # the 30-day run's days before 14

    result = await retention.run_once(settings, batch_size=4)

    assert result.cutoff == kept_from
    assert set(result.dropped) == {
        retention.partition_name(name, day)
        for name in ("mail_logs", "rejection_logs")
        for day in old_days
    }
    # Partition rows and default rows alike; log_messages by the same days.
    assert result.deleted == {
        "mail_logs": 15,
        "rejection_logs": 15,
        "log_messages": 15,
        **dict.fromkeys(
            ("sync_runs", "vrrp_events", "promotions", "queue_imports", "audit_log"), 0
        ),
        "user_sessions": 0,
    }
    assert result.batches == 2 + 2 + 4  # the 6 ancient rows of two tables; 15 log_messages
    for model in (MailLog, RejectionLog, LogMessage):
        assert await remaining(model) == {"kept", "new"}
    for name in ("mail_logs", "rejection_logs"):
        names = await partitions(name)
        assert not {retention.partition_name(name, day) for day in old_days} & names.keys()
        assert retention.partition_name(name, kept_from) in names
    # The dashboard's totals equal a count of what is left, and nothing before the kept days.
    assert await table(KEPT) == await table(RECOUNT)
    assert result.totals_forgotten > 0
    assert await MailLog.raw("SELECT 1 FROM log_totals WHERE period_start < {}", kept_from) == []

    again = await retention.run_once(settings, batch_size=4)
    assert again.total == 0 and again.batches == 0 and again.dropped == []


async def test_the_kept_latest_rows_follow_the_dropped_days_and_the_totals_stay_exact(settings):
    """mail_log_latest after partitions went: a queue ID whose rows all went is forgotten, one
    with a row left keeps that row's time, and a queue ID used again after its rows went counts
    as a new message (as the log says), not as one that moved."""
    now = dt.datetime.now(dt.UTC)
    await retention.run_once(dataclasses.replace(settings, retention_days=30))
    settings = dataclasses.replace(settings, retention_days=14)
    kept_from = retention.first_kept_day(now, 14)

    async def mail(at: dt.datetime, queue_ids: list[str]) -> None:
        await MailLog.insert(
            *(MailLog(at=at, node_id="a", queue_id=qid, status="sent") for qid in queue_ids)
        )

    await mail(kept_from - 3 * DAY, ["gone-0", "gone-1", "gone-2"])
    await mail(kept_from - 2 * DAY, ["span-0", "span-1"])
    await mail(now - dt.timedelta(minutes=30), ["span-0", "span-1"])  # they go on later
    await mail(now - 40 * DAY, ["ancient-0"])  # in the default partition, deleted row by row

    await retention.run_once(settings, batch_size=4)

    assert await latest(LATEST_KEPT) == await latest(LATEST_RECOUNT)
    assert {qid.split("-")[0] for qid in await latest(LATEST_KEPT)} == {"span"}
    # The gone messages' queue IDs come back for new mail: each a message of now.
    await mail(now - dt.timedelta(minutes=10), ["gone-0", "gone-1", "ancient-0"])
    assert await latest(LATEST_KEPT) == await latest(LATEST_RECOUNT)
    assert await table(KEPT) == await table(RECOUNT)


async def test_a_run_makes_the_partitions_of_the_days_ahead(settings):
    now = dt.datetime.now(dt.UTC)
    today = retention.utc_day(now)
    await MailLog.raw(f"DROP TABLE IF EXISTS {retention.partition_name('mail_logs', today)}")
    await MailLog.raw(
        f"DROP TABLE IF EXISTS {retention.partition_name('rejection_logs', today + 3 * DAY)}"
    )
    result = await retention.run_once(settings)
    assert retention.partition_name("mail_logs", today) in result.created
    for name in ("mail_logs", "rejection_logs"):
        names = await partitions(name)
        for ahead in range(retention.AHEAD_DAYS + 1):
            day = today + ahead * DAY
            assert names[retention.partition_name(name, day)] == (
                f"FOR VALUES FROM ('{day:%Y-%m-%d} 00:00:00+00') "
                f"TO ('{day + DAY:%Y-%m-%d} 00:00:00+00')"
            )
        assert names[f"{name}_default"] == "DEFAULT"
    assert (await retention.run_once(settings)).created == []


async def test_rows_that_went_to_the_default_partition_move_into_their_day(settings):
    now = dt.datetime.now(dt.UTC)
    today = retention.utc_day(now)
    day = today - 2 * DAY
    for name in ("mail_logs", "rejection_logs"):
        await MailLog.raw(f"DROP TABLE IF EXISTS {retention.partition_name(name, day)}")
    await seed(day + dt.timedelta(hours=5), 9, "strays")
    await seed(now, 2, "today")
    assert await where(MailLog, "strays") == {"mail_logs_default"}
    before = await MailLog.select().order_by(MailLog.id)

    result = await retention.run_once(settings)

    assert retention.partition_name("mail_logs", day) in result.created
    assert await where(MailLog, "strays") == {retention.partition_name("mail_logs", day)}
    assert await where(RejectionLog, "strays") == {retention.partition_name("rejection_logs", day)}
    assert await MailLog.select().order_by(MailLog.id) == before
    assert await table(KEPT) == await table(RECOUNT)


async def test_every_growing_table_loses_its_old_rows_and_keeps_new_ones(settings):
    now = dt.datetime.now(dt.UTC)
    settings = dataclasses.replace(
        settings,
        sync_runs_retention_days=30,
        vrrp_events_retention_days=10,
        queue_imports_retention_days=90,
        audit_retention_days=400,
        session_idle_minutes=30,
        session_max_hours=12,
    )
    ages = {"old": 1.01, "new": 0.99}  # times each table's retention

    def at(days: int, tag: str) -> dt.datetime:
        return now - dt.timedelta(days=days * ages[tag])

    for tag in ages:
        await SyncRun.insert(
            *(
                SyncRun(started_at=at(30, tag), node_id="a", outcome="ok", detail=tag)
                for _ in range(3)
            )
        )
        await VrrpEvent.insert(
            VrrpEvent(at=at(10, tag), node_id=tag, instance="VI_1", state="MASTER", priority=100)
        )
        await Promotion.insert(
            Promotion(node_id=tag, master_at=at(10, tag), finished_at=at(10, tag))
        )
        await QueueImport.insert(
            QueueImport(node_id="a", original_queue_id=tag, imported_at=at(90, tag))
        )
        await AuditLog.insert(AuditLog(at=at(400, tag), actor=tag, action="login"))
    user_id = (await AppUser.select(AppUser.id).first())["id"]
    sessions = {
        "idle": (now - dt.timedelta(hours=1), now - dt.timedelta(minutes=31)),
        "too long": (now - dt.timedelta(hours=13), now - dt.timedelta(minutes=1)),
        "live": (now - dt.timedelta(hours=11), now - dt.timedelta(minutes=29)),
    }
    for name, (created, seen) in sessions.items():
        await UserSession.insert(
            UserSession(
                token_hash=name, user=user_id, created_at=created, last_seen_at=seen, source_ip=""
            )
        )
    # Never pruned, however old.
    await ConfigVersion.insert(
        ConfigVersion(
            number=1, snapshot="{}", checksum="x", author="admin", created_at=now - 3000 * DAY
        )
    )
    await AppUser.update({AppUser.created_at: now - 3000 * DAY}).where(AppUser.id == user_id)

    result = await retention.run_once(settings, batch_size=2)

    assert {k: v for k, v in result.deleted.items() if v} == {
        "sync_runs": 3,
        "vrrp_events": 1,
        "promotions": 1,
        "queue_imports": 1,
        "audit_log": 1,
        "user_sessions": 2,
    }
    assert {row["detail"] for row in await SyncRun.select(SyncRun.detail)} == {"new"}
    assert await SyncRun.count() == 3
    assert {row["node_id"] for row in await VrrpEvent.select()} == {"new"}
    assert {row["node_id"] for row in await Promotion.select()} == {"new"}
    assert {row["original_queue_id"] for row in await QueueImport.select()} == {"new"}
    assert {row["actor"] for row in await AuditLog.select()} == {"new"}
    assert {row["token_hash"] for row in await UserSession.select()} == {"live"}
    assert await ConfigVersion.count() == 1 and await AppUser.count() == 1


async def test_two_runs_at_once_delete_everything_once(settings):
    now = dt.datetime.now(dt.UTC)
    settings = dataclasses.replace(settings, retention_days=7)
    await seed(now - 400 * DAY, 40, "old")  # no partition that old: the default partition
    await seed(now - DAY, 3, "new")
    first, second = await asyncio.gather(
        retention.run_once(settings, batch_size=3), retention.run_once(settings, batch_size=3)
    )
    assert first.total + second.total == 3 * 40
    assert not set(first.created) & set(second.created)
    assert not set(first.dropped) & set(second.dropped)
    assert await MailLog.count() == 3
    assert await table(KEPT) == await table(RECOUNT)


async def test_the_cli_runs_retention_and_says_what_went_in_one_line():
    now = dt.datetime.now(dt.UTC)
    await seed(now - 60 * DAY, 3, "old")
    old_cursor = LogCursor(
        source="/var/log/postfix.log", inode=1, position=9, updated_at=now - 99 * DAY
    )
    await LogCursor.insert(old_cursor)
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "retention"],
        capture_output=True,
        text=True,
        env={**os.environ, "RETENTION_DAYS": "30"},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "retention:" in line]
    assert len(lines) == 1
    assert (
        "retention: deleted 3 mail_logs, 3 rejection_logs, 3 log_messages, 0 sync_runs, "
        "0 vrrp_events, 0 promotions, 0 queue_imports, 0 audit_log, 0 user_sessions; mail logs "
        "kept from "
        f"{retention.first_kept_day(dt.datetime.now(dt.UTC), 30):%Y-%m-%d}"
    ) in lines[0]
    assert lines[0].endswith(" s")
    assert await MailLog.count() == 0
    assert await LogCursor.count() == 1  # where ingestion stands is not history


async def test_a_bad_retention_setting_stops_the_job_with_one_line_naming_it():
    now = dt.datetime.now(dt.UTC)
    await seed(now - 60 * DAY, 3, "old")
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "retention"],
        capture_output=True,
        text=True,
        env={**os.environ, "QUEUE_IMPORTS_RETENTION_DAYS": "2"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "mailrelay: QUEUE_IMPORTS_RETENTION_DAYS must be between 7 and 3650, got 2\n"
    )
    assert await MailLog.count() == 3
