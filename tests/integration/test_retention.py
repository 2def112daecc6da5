"""Retention: rows older than RETENTION_DAYS go, in batches; newer rows and the cursor stay."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import subprocess
import sys

from app.db.tables import LogCursor, LogMessage, MailLog, RejectionLog
from app.jobs import retention

NOW = dt.datetime.now(dt.UTC)


async def seed(days_ago: float, count: int, tag: str) -> None:
    at = NOW - dt.timedelta(days=days_ago)
    await MailLog.insert(
        *(
            MailLog(
                at=at, node_id="a", queue_id=f"{tag}-{i}", recipient="r@example.org", status="sent"
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


async def remaining(table) -> set[str]:
    """The tags of the rows left."""
    key = "client" if table is RejectionLog else "queue_id"
    return {row[key].split("-")[0] for row in await table.select()}


async def test_old_rows_go_in_batches_and_new_rows_stay(settings):
    settings = dataclasses.replace(settings, retention_days=14)
    await seed(30, 23, "old")
    await seed(14.1, 4, "edge")
    await seed(13.9, 5, "kept")
    await seed(0, 7, "new")
    old_cursor = LogCursor(
        source="/var/log/postfix.log", inode=1, position=9, updated_at=NOW - dt.timedelta(days=99)
    )
    await LogCursor.insert(old_cursor)

    result = await retention.run_once(settings, batch_size=5)

    assert result.deleted == {"mail_logs": 27, "rejection_logs": 27, "log_messages": 27}
    assert result.batches == 3 * 6  # 27 rows in batches of 5, per table
    for table in (MailLog, RejectionLog, LogMessage):
        assert await remaining(table) == {"kept", "new"}
        assert await table.count() == 12
    assert await LogCursor.count() == 1  # where ingestion stands is not history

    again = await retention.run_once(settings, batch_size=5)
    assert again.total == 0 and again.batches == 0


async def test_two_runs_at_once_delete_everything_once(settings):
    settings = dataclasses.replace(settings, retention_days=7)
    await seed(10, 40, "old")
    await seed(1, 3, "new")
    first, second = await asyncio.gather(
        retention.run_once(settings, batch_size=3), retention.run_once(settings, batch_size=3)
    )
    assert first.total + second.total == 3 * 40
    assert await MailLog.count() == 3


async def test_the_cli_runs_retention():
    await seed(400, 3, "old")
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "retention"],
        capture_output=True,
        text=True,
        env={**os.environ, "RETENTION_DAYS": "365"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "deleted 3 mail_logs, 3 rejection_logs, 3 log_messages rows" in result.stderr
    assert await MailLog.count() == 0
