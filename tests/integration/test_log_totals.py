"""The dashboard's five-minute totals (log_totals), kept by triggers on mail_logs and
rejection_logs, against a count straight from the log tables after every kind of write.

Real PostgreSQL: random inserts, updates (time, status, queue ID), deletes and truncates, in
statements of several rows, from several seeds. After each step the table the triggers keep
must equal a recount, row for row (zero rows aside).
"""

from __future__ import annotations

import datetime as dt
import random

import pytest

from app.db.tables import MailLog

STATUSES = ("sent", "deferred", "bounced", "expired")
BASE = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)

# What the totals must be, counted from the log tables alone (not with the migration's
# rebuild function, so that a mistake shared by both would still show).
RECOUNT = """
WITH rows AS (
    SELECT date_bin('5 minutes', at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS p, status
    FROM mail_logs
), latest AS (
    SELECT date_bin('5 minutes', max(at), TIMESTAMPTZ '2000-01-01 00:00:00+00') AS p
    FROM mail_logs GROUP BY queue_id
), rejects AS (
    SELECT date_bin('5 minutes', at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS p
    FROM rejection_logs
), periods AS (
    SELECT p FROM rows UNION SELECT p FROM latest UNION SELECT p FROM rejects
)
SELECT periods.p AS period_start,
       (SELECT count(*) FROM rows WHERE rows.p = periods.p AND status = 'sent') AS sent,
       (SELECT count(*) FROM rows WHERE rows.p = periods.p AND status = 'deferred') AS deferred,
       (SELECT count(*) FROM rows WHERE rows.p = periods.p AND status = 'bounced') AS bounced,
       (SELECT count(*) FROM rows WHERE rows.p = periods.p AND status = 'expired') AS expired,
       (SELECT count(*) FROM latest WHERE latest.p = periods.p) AS messages,
       (SELECT count(*) FROM rejects WHERE rejects.p = periods.p) AS rejected
FROM periods
"""
KEPT = "SELECT period_start, sent, deferred, bounced, expired, messages, rejected FROM log_totals"
# Each queue ID's latest time as the triggers keep it (mail_log_latest), and as the log says.
LATEST_KEPT = "SELECT queue_id, at FROM mail_log_latest"
LATEST_RECOUNT = "SELECT queue_id, max(at) AS at FROM mail_logs GROUP BY queue_id"


async def table(query: str) -> dict[dt.datetime, tuple[int, ...]]:
    rows = await MailLog.raw(query)
    return {
        row["period_start"]: counts
        for row in rows
        if any(
            counts := tuple(
                row[c] for c in ("sent", "deferred", "bounced", "expired", "messages", "rejected")
            )
        )
    }


async def latest(query: str) -> dict[str, dt.datetime]:
    return {row["queue_id"]: row["at"] for row in await MailLog.raw(query)}


def moment(rng: random.Random) -> dt.datetime:
    return BASE + dt.timedelta(seconds=rng.randrange(0, 3 * 3600))


def when(rng: random.Random) -> str:
    return moment(rng).isoformat()


async def step(rng: random.Random) -> str:
    kind = rng.choice(
        ["insert"] * 5
        + ["reject"] * 2
        + ["move", "status", "requeue", "delete", "delete_rejects", "truncate"]
    )
    if kind == "insert":
        values = ", ".join(
            f"('{when(rng)}', 'a', 'Q{rng.randrange(40)}', '{rng.choice(STATUSES)}')"
            for _ in range(rng.randrange(1, 8))
        )
        await MailLog.raw(
            f"INSERT INTO mail_logs (at, node_id, queue_id, status) VALUES {values}"  # noqa: S608
        )
    elif kind == "reject":
        values = ", ".join(f"('{when(rng)}', 'a')" for _ in range(rng.randrange(1, 5)))
        await MailLog.raw(f"INSERT INTO rejection_logs (at, node_id) VALUES {values}")  # noqa: S608
    elif kind == "move":
        await MailLog.raw(
            "UPDATE mail_logs SET at = at + make_interval(mins => {}) WHERE id % 3 = {}",
            rng.randrange(-90, 90),
            rng.randrange(3),
        )
    elif kind == "status":
        await MailLog.raw(
            "UPDATE mail_logs SET status = {} WHERE queue_id = {}",
            rng.choice(STATUSES),
            f"Q{rng.randrange(40)}",
        )
    elif kind == "requeue":
        await MailLog.raw(
            "UPDATE mail_logs SET queue_id = {} WHERE queue_id = {}",
            f"Q{rng.randrange(40)}",
            f"Q{rng.randrange(40)}",
        )
    elif kind == "delete":
        await MailLog.raw("DELETE FROM mail_logs WHERE at < {}", moment(rng))
    elif kind == "delete_rejects":
        await MailLog.raw("DELETE FROM rejection_logs WHERE at > {}", moment(rng))
    else:
        await MailLog.raw(f"TRUNCATE {rng.choice(['mail_logs', 'rejection_logs'])}")
    return kind


@pytest.mark.parametrize("seed", range(4))
async def test_the_kept_totals_equal_a_recount_after_every_kind_of_write(seed):
    rng = random.Random(seed)
    for number in range(40):
        kind = await step(rng)
        assert await table(KEPT) == await table(RECOUNT), f"step {number}: {kind}"
        assert await latest(LATEST_KEPT) == await latest(LATEST_RECOUNT), f"step {number}"
    # The migration's rebuild gives the same tables too.
    await MailLog.raw("UPDATE mail_log_latest SET at = at - interval '1 hour'")
    await MailLog.raw("SELECT log_totals_rebuild()")
    assert await table(KEPT) == await table(RECOUNT)
    assert await latest(LATEST_KEPT) == await latest(LATEST_RECOUNT)


async def test_the_totals_trigger_function_runs_without_jit():
    """Priced at about 1e10 (enable_seqscan = off inside), its statements were JIT-compiled
    for 40 to 65 ms per mail_logs statement."""
    rows = await MailLog.raw(
        "SELECT proconfig FROM pg_proc WHERE proname = 'mail_log_totals_apply'"
    )
    assert rows and "jit=off" in rows[0]["proconfig"], rows
