"""The `mailrelay alerts` job: look at the node, keep the alerts' state, tell a person.

One run: the cluster view (this node and the peer, as the dashboard sees them) plus what only
this job looks up (the last sync outcomes, the held mail, the oldest queued message), the
conditions judged (app/alerts/conditions.py), the state stored, and for each channel each alert
whose state differs from what the channel was last told: one notice, unless that channel heard
about this alert less than ALERT_MIN_INTERVAL_SECONDS ago (then the next run after the interval
tells the state of that moment; a condition that came and went meanwhile says nothing). A
notice that fails is logged and tried again by the next run; the run itself goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from app import backup
from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.alerts import conditions, notify, state
from app.cluster import status
from app.db.tables import LogCursor, SyncRun
from app.replication import reconcile
from app.settings import Settings

log = logging.getLogger("mailrelay.alerts")

# Finding the oldest message means listing the queue (postqueue -j through the agent). Above
# this many messages the listing costs seconds every run, and the queue-size alert holds anyway.
QUEUE_AGE_MAX_MESSAGES = 20_000


@dataclass
class RunResult:
    checked: int = 0
    active: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)  # "email: started queue_size"
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # held back by the minimum interval
    seconds: float = 0.0


async def run_once(
    settings: Settings, agent: AgentClient, now: dt.datetime | None = None
) -> RunResult:
    started = time.monotonic()
    now = now or dt.datetime.now(dt.UTC)
    result = RunResult()
    facts = await _facts(settings, agent, now)
    findings = conditions.evaluate(facts, settings.alerts)
    result.checked = len(findings)
    alerts = await state.record(settings.node_id, findings, now)
    result.active = [a.key for a in alerts if a.active]
    await _notify(settings, alerts, now, result)
    result.seconds = time.monotonic() - started
    _log_run(result)
    return result


async def _facts(settings: Settings, agent: AgentClient, now: dt.datetime) -> conditions.Facts:
    view = await status.cluster_view(settings, agent)
    return conditions.Facts(
        view=view,
        now=now,
        sync_outcomes=await _sync_outcomes(settings),
        held=len(reconcile.pending(settings)),
        oldest_queued_seconds=await _oldest_queued(agent, view["this"], now),
        previous=await state.figures(settings.node_id),
        backup_age_hours=_backup_age_hours(settings, now),
        ingest_behind=await _ingest_behind(settings, now),
    )


async def _ingest_behind(settings: Settings, now: dt.datetime) -> tuple[int, float] | None:
    """What of the mail log ingestion has not read (a rotated log counts whole), and the
    minutes since its cursor last moved; an empty log has nothing to read."""
    path = settings.postfix_log_file
    rows = await LogCursor.raw(
        "SELECT inode, position, updated_at FROM log_cursors WHERE source = {}", str(path)
    )
    try:
        log_file = path.stat()
    except OSError:
        return None
    if not rows:
        return None
    cursor = rows[0]
    unread = log_file.st_size
    if log_file.st_ino == cursor["inode"]:
        unread = max(0, log_file.st_size - cursor["position"])
    return unread, max(0.0, (now - cursor["updated_at"]).total_seconds() / 60)


def _backup_age_hours(settings: Settings, now: dt.datetime) -> float | None:
    try:
        made = backup.last_made(settings.backup_dir, settings.node_id, now.timestamp())
    except OSError as exc:
        log.warning("alerts: cannot look at %s: %s", settings.backup_dir, exc.strerror)
        return None
    return max(0.0, (now.timestamp() - made) / 3600)


async def _sync_outcomes(settings: Settings) -> list[str]:
    rows = await SyncRun.raw(
        "SELECT outcome FROM sync_runs WHERE node_id = {} ORDER BY id DESC LIMIT {}",
        settings.node_id,
        settings.alerts.sync_failures,
    )
    return [row["outcome"] for row in rows]


async def _oldest_queued(
    agent: AgentClient, this: dict[str, Any], now: dt.datetime
) -> float | None:
    messages = (this.get("queue") or {}).get("messages")
    if not isinstance(messages, int) or not 0 < messages <= QUEUE_AGE_MAX_MESSAGES:
        return None
    try:
        entries = await agent.queue_list(limit=QUEUE_AGE_MAX_MESSAGES)
    except (AgentUnavailable, AgentRefused) as exc:
        log.warning("alerts: cannot list the queue for its oldest message: %s", exc)
        return None
    arrivals = [e["arrival_time"] for e in entries if isinstance(e.get("arrival_time"), int)]
    if not arrivals:
        return None
    return max(now.timestamp() - min(arrivals), 0.0)


async def _notify(
    settings: Settings, alerts: list[state.Alert], now: dt.datetime, result: RunResult
) -> None:
    channels = notify.channels(settings)
    if not channels:
        return
    told = await state.notices(settings.node_id, channels, now)
    interval = dt.timedelta(seconds=settings.alerts.min_interval_seconds)
    for alert in alerts:
        for channel in channels:
            notice = told.get((alert.key, channel))
            if notice is None or notice.reported == alert.active:
                continue
            what = f"{channel}: {'started' if alert.active else 'cleared'} {alert.key}"
            # A notice sent while the clock was ahead is not waited for: the wait would last
            # as long as the clock was ahead.
            if (
                notice.last_sent_at is not None
                and dt.timedelta(0) <= now - notice.last_sent_at < interval
            ):
                result.waiting.append(what)
                continue
            if not await state.claim(settings.node_id, notice, alert.active, now):
                continue  # another run sent it
            message = notify.AlertNotice(
                settings.node_id,
                settings.hostname,
                alert.key,
                alert.active,
                alert.since,
                alert.text,
                alert.values,
                now,
            )
            try:
                await notify.send(settings, channel, message)
            except notify.NotifyError as exc:
                await state.failed(settings.node_id, notice, now, str(exc))
                log.error("alerts: %s not sent, the next run tries again: %s", what, exc)
                result.failed.append(what)
                continue
            await state.sent(settings.node_id, notice)
            result.sent.append(what)


def _log_run(result: RunResult) -> None:
    # One line per run, also a calm one (systemd logs each run's start and end anyway): the
    # journal shows that the job runs and how long it takes. A failed notice is an error above.
    level = logging.WARNING if result.failed else logging.INFO
    log.log(
        level,
        "alerts: checked %d conditions, %d active%s; sent %d%s, failed %d, waiting %d in %.2f s",
        result.checked,
        len(result.active),
        f" ({', '.join(result.active)})" if result.active else "",
        len(result.sent),
        f" ({'; '.join(result.sent)})" if result.sent else "",
        len(result.failed),
        len(result.waiting),
        result.seconds,
    )
