"""Retention: delete mail log rows older than RETENTION_DAYS.

Deletes in small batches, each its own statement and so its own short transaction: ingestion and
the dashboard keep working while a large backlog (say, after the setting was lowered) goes, and
no transaction holds millions of row locks. `FOR UPDATE SKIP LOCKED` lets a second runner (the
other node's timer on a shared database, or an operator's manual run) take other rows instead of
waiting for the first one's.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from app.db.tables import MailLog
from app.settings import Settings

log = logging.getLogger("mailrelay.retention")

# table -> the column that says how old a row is. log_messages rows are the context of messages
# first seen then; a message still deferred after RETENTION_DAYS loses its sender and size in
# later rows, as its earlier rows are gone too.
TABLES = {"mail_logs": "at", "rejection_logs": "at", "log_messages": "first_seen_at"}


@dataclass
class RetentionResult:
    cutoff: dt.datetime
    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


async def run_once(settings: Settings, batch_size: int = 5000) -> RetentionResult:
    started = time.monotonic()
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=settings.retention_days)
    result = RetentionResult(cutoff=cutoff)
    for table, column in TABLES.items():
        result.deleted[table] = 0
        while True:
            # Table and column names come from TABLES above, never from input.
            rows = await MailLog.raw(
                f"WITH gone AS (DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "  # noqa: S608
                f"WHERE {column} < {{}} ORDER BY id LIMIT {{}} FOR UPDATE SKIP LOCKED) "
                "RETURNING 1) SELECT count(*) AS n FROM gone",
                cutoff,
                batch_size,
            )
            deleted = rows[0]["n"]
            if not deleted:
                break
            result.deleted[table] += deleted
            result.batches += 1
    result.seconds = time.monotonic() - started
    log.info(
        "retention: deleted %s rows older than %s (%d days) in %d batches in %.2f s",
        ", ".join(f"{count} {table}" for table, count in result.deleted.items()),
        cutoff.isoformat(timespec="seconds"),
        settings.retention_days,
        result.batches,
        result.seconds,
    )
    return result
