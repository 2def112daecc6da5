"""The counters /metrics reads are kept by the database as rows are written (sync_run_totals,
traffic_totals), against a real PostgreSQL with real ingestion: exact, counted once, and never
taken back when retention deletes the rows they counted."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

from app.cluster import status
from app.db.tables import MailLog, SyncRun
from app.jobs import ingest
from tests.loggen import traffic


async def _totals() -> dict[tuple[str, str], int]:
    rows = await SyncRun.raw("SELECT node_id, outcome, runs FROM sync_run_totals")
    return {(r["node_id"], r["outcome"]): r["runs"] for r in rows}


def _run(node_id: str, outcome: str, started_at: dt.datetime) -> SyncRun:
    return SyncRun(started_at=started_at, node_id=node_id, outcome=outcome, duration_seconds=0.1)


async def test_sync_run_totals_count_every_writer_once_and_keep_what_retention_deletes():
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(days=60)
    await SyncRun.insert(_run("a", "ok", old), _run("a", "ok", now), _run("a", "failed", now))
    await SyncRun.insert(_run("b", "conflict", now))
    # The spool flush's conditional insert: a row already recorded is not inserted, nor counted.
    insert_once = (
        "INSERT INTO sync_runs (started_at, node_id, outcome) SELECT {}, 'a', 'ok' "
        "WHERE NOT EXISTS (SELECT 1 FROM sync_runs WHERE node_id = 'a' AND started_at = {})"
    )
    later = now + dt.timedelta(seconds=5)
    await SyncRun.raw(insert_once, now, now)
    await SyncRun.raw(insert_once, later, later)
    assert await _totals() == {("a", "ok"): 3, ("a", "failed"): 1, ("b", "conflict"): 1}

    await SyncRun.delete().where(SyncRun.started_at < now - dt.timedelta(days=30))
    assert await SyncRun.count() == 4
    assert await _totals() == {("a", "ok"): 3, ("a", "failed"): 1, ("b", "conflict"): 1}


async def test_the_status_reads_the_kept_sync_totals_at_the_same_cost_with_many_runs(app, settings):
    """/metrics' runs per outcome no longer grow with sync_runs: measured with 200,000 rows
    (the app fixture's pool: no connection set-up in the timing)."""
    node = dataclasses.replace(settings, node_id="a")
    await SyncRun.raw(
        "INSERT INTO sync_runs (started_at, node_id, outcome) "
        "SELECT now() - n * interval '5 seconds', 'a', CASE WHEN n % 50 = 0 THEN 'failed' "
        "ELSE 'ok' END FROM generate_series(1, 200000) AS n"
    )
    await SyncRun.raw("ANALYZE sync_runs")
    took = []
    for _ in range(3):
        started = time.monotonic()
        part = await status._sync(node.node_id, dt.datetime.now(dt.UTC), active=True)
        took.append(time.monotonic() - started)
        assert part["runs"] == {"ok": 196000, "failed": 4000}
    # Here: count(*) ... GROUP BY over these rows 100-130 ms a query; the whole sync part with
    # the kept totals 2-20 ms.
    assert min(took) < 0.05, took


async def test_traffic_totals_follow_ingestion_and_survive_retention(settings, tmp_path):
    log_settings = dataclasses.replace(settings, postfix_log_file=tmp_path / "postfix.log")
    log = traffic(0, 30)
    log_settings.postfix_log_file.write_text(log.text())
    await ingest.run_once(log_settings)
    expected = {
        "accepted": 30,
        "sent": log.expect["sent"],
        "deferred": log.expect["deferred"],
        "bounced": log.expect["bounced"],
        "expired": log.expect["expired"],
        "rejected": log.expect["rejected"],
    }
    assert await status._traffic(settings.node_id) == expected

    # More lines about the same messages (deliveries of known queue IDs) and 10 new ones: the
    # known ones are not accepted twice.
    more = traffic(20, 20)
    with log_settings.postfix_log_file.open("a") as handle:
        handle.write(more.text())
    await ingest.run_once(log_settings)
    after = await status._traffic(settings.node_id)
    assert after["accepted"] == 40
    assert after["sent"] == expected["sent"] + more.expect["sent"]

    await MailLog.delete(force=True)
    await SyncRun.raw("DELETE FROM rejection_logs")
    await SyncRun.raw("DELETE FROM log_messages")
    assert await status._traffic(settings.node_id) == after
