"""Retention: every table that grows by itself keeps its rows for a set number of days.

mail_logs and rejection_logs are partitioned by UTC day (the baseline migration). A day
goes as a whole once all of it is older than RETENTION_DAYS: its partition is dropped (its files
unlinked at commit), no row is deleted one by one and vacuum has nothing to clean up. So a row
is kept RETENTION_DAYS and at most one day more. The run also makes the partitions of the days
to come (AHEAD_DAYS), and a partition for any kept day whose rows went to the default partition
meanwhile, moving them there. Ingestion never waits for this job: a row for a day without its
own partition goes to the default partition.

Everything else is deleted in small batches, each its own statement and so its own short
transaction: ingestion and the dashboard keep working while a large backlog (say, after a
setting was lowered) goes, and no transaction holds millions of row locks. `FOR UPDATE SKIP
LOCKED` lets a second runner (the other node's timer on a shared database, or an operator's
manual run) take other rows instead of waiting for the first one's; an advisory lock lets one
runner at a time make or drop partitions.

Not here: config_versions and users are never pruned; login_throttle forgets drained scores on
every login attempt (app/auth/throttle.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from asyncpg.exceptions import DeadlockDetectedError, LockNotAvailableError

from app.auth.sessions import end_expired_sessions
from app.db.tables import MailLog
from app.settings import Settings

log = logging.getLogger("mailrelay.retention")

T = TypeVar("T")
DAY = dt.timedelta(days=1)
# Partitions made ahead: a week of the timer (daily) not running before rows go to the default
# partition.
AHEAD_DAYS = 7
PARTITIONED = ("mail_logs", "rejection_logs")
_PARTITION_NAME = re.compile(r"_p(\d{8})$")
# Making or dropping a partition locks its table against every reader and writer for a moment:
# wait this long for the lock at most (a long dashboard query, a slow ingestion batch), then
# try again; after the last attempt the work waits for the next run.
LOCK_TIMEOUT = "5s"
LOCK_ATTEMPTS = 3
# pg_advisory_xact_lock keys: "part" for partition work; "totl" is the lock the log_totals
# triggers take (the baseline migration): pruning the totals waits for every writer's.
PARTITIONS_LOCK = 1885434484
TOTALS_LOCK = 1953461356


@dataclass(frozen=True)
class Rule:
    """Rows of `table` whose `column` is older than `days` go; with `whole_days`, the rows
    of the days before the first kept day (the mail logs' rule)."""

    table: str
    column: str
    days: Callable[[Settings], int]
    whole_days: bool = False


# mail_logs and rejection_logs here: the rows their default partition holds. log_messages rows
# are the context of messages first seen then, kept as long as the mail logs of their day; a
# message still deferred after that loses its sender and size in later rows, as its earlier rows
# are gone too.
RULES = (
    Rule("mail_logs", "at", lambda s: s.retention_days, whole_days=True),
    Rule("rejection_logs", "at", lambda s: s.retention_days, whole_days=True),
    Rule("log_messages", "first_seen_at", lambda s: s.retention_days, whole_days=True),
    Rule("sync_runs", "started_at", lambda s: s.sync_runs_retention_days),
    Rule("vrrp_events", "at", lambda s: s.vrrp_events_retention_days),
    # With the MASTER event each one followed: the peer's reconcile reads them together.
    Rule("promotions", "master_at", lambda s: s.vrrp_events_retention_days),
    Rule("queue_imports", "imported_at", lambda s: s.queue_imports_retention_days),
    Rule("audit_log", "at", lambda s: s.audit_retention_days),
)


@dataclass
class RetentionResult:
    cutoff: dt.datetime  # the mail logs' days before this one are gone
    deleted: dict[str, int] = field(default_factory=dict)  # rows gone per table
    dropped: list[str] = field(default_factory=list)  # day partitions
    created: list[str] = field(default_factory=list)
    postponed: list[str] = field(default_factory=list)  # partition work that found no lock
    totals_forgotten: int = 0  # log_totals periods of the dropped days
    batches: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def utc_day(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def first_kept_day(now: dt.datetime, retention_days: int) -> dt.datetime:
    """The oldest UTC day of mail logs kept: the one that holds now - RETENTION_DAYS."""
    return utc_day(now - dt.timedelta(days=retention_days))


def partition_name(table: str, day: dt.datetime) -> str:
    return f"{table}_p{day:%Y%m%d}"


async def _raw(sql: str, *args: object) -> list[dict]:
    return await MailLog.raw(sql, *args)


async def _locked(what: str, work: Callable[[], Awaitable[T]]) -> T | None:
    """`work` in one transaction that waits at most LOCK_TIMEOUT for each lock; None when it
    found none after LOCK_ATTEMPTS."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            async with MailLog._meta.db.transaction():
                await _raw(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                await _raw("SELECT pg_advisory_xact_lock({})", PARTITIONS_LOCK)
                return await work()
        except (LockNotAvailableError, DeadlockDetectedError) as exc:
            log.warning("retention: %s, attempt %d of %d: %s", what, attempt, LOCK_ATTEMPTS, exc)
            await asyncio.sleep(attempt)
    return None


async def _partitions(table: str) -> dict[str, dt.datetime]:
    """The table's day partitions (by our naming) and their days."""
    rows = await _raw(
        "SELECT c.relname AS name FROM pg_inherits AS i JOIN pg_class AS c "
        "ON c.oid = i.inhrelid WHERE i.inhparent = {}::regclass",
        table,
    )
    days = {}
    for row in rows:
        match = _PARTITION_NAME.search(row["name"])
        if match and row["name"] == f"{table}_p{match[1]}":
            days[row["name"]] = dt.datetime.strptime(match[1], "%Y%m%d").replace(tzinfo=dt.UTC)
    return days


def _bounds(day: dt.datetime) -> str:
    # Our own datetimes, never input: DDL takes no parameters.
    return f"FROM ('{day.isoformat()}') TO ('{(day + DAY).isoformat()}')"


async def _make_partitions(table: str, days: list[dt.datetime]) -> list[str]:
    existing = await _partitions(table)
    missing = [day for day in days if partition_name(table, day) not in existing]
    default = f"{table}_default"
    found = await _raw("SELECT to_regclass({}) IS NOT NULL AS found", default)
    if not missing and found[0]["found"]:
        return []
    await _raw(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    await _raw(f"CREATE TABLE IF NOT EXISTS {default} PARTITION OF {table} DEFAULT")
    for day in missing:
        name = partition_name(table, day)
        strays = await _raw(
            f"SELECT EXISTS (SELECT 1 FROM {default} WHERE at >= {{}} AND at < {{}}) AS found",  # noqa: S608
            day,
            day + DAY,
        )
        if not strays[0]["found"]:
            await _raw(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES {_bounds(day)}")
            continue
        # The day's rows went to the default partition (no partition for it then): they move
        # into the new one first, as PostgreSQL refuses a partition for rows the default holds.
        # Partition to partition, below the parent: its log_totals triggers see nothing, and
        # the totals, which count these rows already, stay right.
        await _raw(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        await _raw(
            f"WITH moved AS (DELETE FROM {default} WHERE at >= {{}} AND at < {{}} RETURNING *) "  # noqa: S608
            f"INSERT INTO {name} SELECT * FROM moved",
            day,
            day + DAY,
        )
        await _raw(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES {_bounds(day)}")
    return [partition_name(table, day) for day in missing]


async def _drop_partitions(table: str, before: dt.datetime) -> tuple[list[str], int]:
    """Drop the day partitions older than `before`; their names and how many rows they held."""
    old = sorted(name for name, day in (await _partitions(table)).items() if day < before)
    if not old:
        return [], 0
    # Counted before the table is locked: only a log line's figure, and no reader waits for it.
    total = " + ".join(f"(SELECT count(*) FROM {name})" for name in old)  # noqa: S608
    counts = await _raw(f"SELECT {total} AS n")
    await _raw(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    await _raw(f"DROP TABLE {', '.join(old)}")
    if table == "mail_logs":
        await _forget_latest(before)
    return old, counts[0]["n"]


async def _forget_latest(before: dt.datetime) -> None:
    """mail_log_latest rows of queue IDs whose rows all went with the dropped days. In the
    drop's transaction and under the totals triggers' lock, so that no writer's trigger ever
    reads a latest time whose row is gone. Older rows left in the default partition keep their
    queue IDs' rows: retention deletes those through the triggers, which update them."""
    await _raw("SELECT pg_advisory_xact_lock({})", TOTALS_LOCK)
    await _raw(
        "DELETE FROM mail_log_latest AS k WHERE k.at < {} AND NOT EXISTS ("
        "SELECT 1 FROM mail_logs AS m WHERE m.queue_id = k.queue_id AND m.at < {})",
        before,
        before,
    )


async def delete_in_batches(
    rule: Rule, cutoff: dt.datetime, batch_size: int, result: RetentionResult
) -> None:
    # Table and column names come from RULES, never from input. The outer condition on the
    # column lets PostgreSQL skip every partition newer than the cutoff.
    sql = (
        f"WITH gone AS (DELETE FROM {rule.table} WHERE {rule.column} < {{}} AND id IN ("  # noqa: S608
        f"SELECT id FROM {rule.table} WHERE {rule.column} < {{}} ORDER BY id LIMIT {{}} "
        "FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*) AS n FROM gone"
    )
    while True:
        deleted = (await _raw(sql, cutoff, cutoff, batch_size))[0]["n"]
        if not deleted:
            return
        result.deleted[rule.table] = result.deleted.get(rule.table, 0) + deleted
        result.batches += 1


async def _forget_totals(before: dt.datetime) -> int:
    """log_totals periods before the first kept day: their rows are gone, mostly with partitions
    (a drop fires no trigger). Under the triggers' lock, and only once no log row that old is
    left: a writer of such a row after this adds its period back, a correct count again."""
    async with MailLog._meta.db.transaction():
        await _raw("SELECT pg_advisory_xact_lock({})", TOTALS_LOCK)
        left = await _raw(
            "SELECT EXISTS (SELECT 1 FROM mail_logs WHERE at < {}) "
            "OR EXISTS (SELECT 1 FROM rejection_logs WHERE at < {}) AS found",
            before,
            before,
        )
        if left[0]["found"]:
            return 0
        rows = await _raw(
            "WITH gone AS (DELETE FROM log_totals WHERE period_start < {} RETURNING 1) "
            "SELECT count(*) AS n FROM gone",
            before,
        )
        return int(rows[0]["n"])


async def run_once(settings: Settings, batch_size: int = 5000) -> RetentionResult:
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    kept_from = first_kept_day(now, settings.retention_days)
    result = RetentionResult(cutoff=kept_from)
    today = utc_day(now)
    days = [kept_from + i * DAY for i in range((today - kept_from).days + AHEAD_DAYS + 1)]
    skip: set[str] = set()
    for table in PARTITIONED:
        made = await _locked(f"making {table} partitions", partial(_make_partitions, table, days))
        if made is None:
            result.postponed.append(f"{table}: partitions ahead")
        else:
            result.created += made
        dropped = await _locked(
            f"dropping old {table} partitions", partial(_drop_partitions, table, kept_from)
        )
        if dropped is None:
            # Deleting those days row by row instead is what partitions are here to avoid.
            result.postponed.append(f"{table}: old partitions")
            skip.add(table)
        else:
            result.dropped += dropped[0]
            result.deleted[table] = dropped[1]
    for rule in RULES:
        result.deleted.setdefault(rule.table, 0)
        if rule.table in skip:
            continue
        cutoff = (
            first_kept_day(now, rule.days(settings))
            if rule.whole_days
            else now - dt.timedelta(days=rule.days(settings))
        )
        await delete_in_batches(rule, cutoff, batch_size, result)
    result.totals_forgotten = await _forget_totals(kept_from)
    # Sessions end after an idle time or a lifetime; one never presented again stays a row.
    result.deleted["user_sessions"] = await end_expired_sessions(
        settings.session_idle_minutes, settings.session_max_hours
    )
    result.seconds = time.monotonic() - started
    _report(result)
    return result


def _report(result: RetentionResult) -> None:
    """One line per run: what went from each table, and how long it took."""
    parts = []
    for table, count in result.deleted.items():
        dropped = sum(1 for name in result.dropped if name.startswith(f"{table}_p"))
        parts.append(
            f"{count} {table}" + (f" ({dropped} day partitions dropped)" if dropped else "")
        )
    line = (
        f"retention: deleted {', '.join(parts)}; mail logs kept from "
        f"{result.cutoff:%Y-%m-%d}; {len(result.created)} partitions made; "
        f"{result.totals_forgotten} log_totals periods forgotten; {result.batches} batches "
        f"in {result.seconds:.2f} s"
    )
    if result.postponed:
        log.warning("%s; postponed (no lock): %s", line, ", ".join(result.postponed))
    else:
        log.info("%s", line)
