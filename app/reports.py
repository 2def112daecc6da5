"""Read models for the dashboard and the audit screen (queries only, no changes)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.db.tables import AuditLog, LogMessage, MailLog, RejectionLog


async def kpi_tiles(retention_days: int) -> list[dict[str, Any]]:
    """Accepted, delivered, deferred, bounced, rejected for 1 h, 24 h and the retention period."""
    now = dt.datetime.now(dt.UTC)
    periods = [
        ("1h", dt.timedelta(hours=1)),
        ("24h", dt.timedelta(hours=24)),
        ("retention", dt.timedelta(days=retention_days)),
    ]
    tiles = []
    for key, span in periods:
        since = now - span
        rows = await MailLog.raw(
            "SELECT count(DISTINCT queue_id) AS accepted, "
            "count(*) FILTER (WHERE status = 'sent') AS delivered, "
            "count(*) FILTER (WHERE status = 'deferred') AS deferred, "
            "count(*) FILTER (WHERE status IN ('bounced', 'expired')) AS bounced "
            "FROM mail_logs WHERE at >= {}",
            since,
        )
        rejected = await RejectionLog.count().where(RejectionLog.at >= since)
        tiles.append({"period": key, **rows[0], "rejected": rejected})
    return tiles


async def recent_rejects(limit: int = 20) -> list[dict[str, Any]]:
    return await RejectionLog.select().order_by(RejectionLog.at, ascending=False).limit(limit)


async def audit_entries(
    actor: str = "",
    action: str = "",
    outcome: str = "",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    query = AuditLog.select().order_by(AuditLog.id, ascending=False).limit(limit).offset(offset)
    if actor:
        query = query.where(AuditLog.actor == actor)
    if action:
        query = query.where(AuditLog.action.like(action.replace("%", "") + "%"))
    if outcome:
        query = query.where(AuditLog.outcome == outcome)
    if since:
        query = query.where(AuditLog.at >= since)
    if until:
        query = query.where(AuditLog.at < until)
    return await query


async def hourly_traffic(hours: int = 24) -> list[dict[str, Any]]:
    """Per hour of the last `hours`: delivered, deferred, bounced and rejected (zeros kept)."""
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    since = now - dt.timedelta(hours=hours - 1)
    buckets = {
        since + dt.timedelta(hours=i): {"delivered": 0, "deferred": 0, "bounced": 0, "rejected": 0}
        for i in range(hours)
    }
    rows = await MailLog.raw(
        "SELECT date_trunc('hour', at) AS hour, "
        "count(*) FILTER (WHERE status = 'sent') AS delivered, "
        "count(*) FILTER (WHERE status = 'deferred') AS deferred, "
        "count(*) FILTER (WHERE status IN ('bounced', 'expired')) AS bounced "
        "FROM mail_logs WHERE at >= {} GROUP BY 1",
        since,
    )
    for row in rows:
        bucket = buckets.get(row["hour"].astimezone(dt.UTC))
        if bucket:
            bucket.update(
                delivered=row["delivered"], deferred=row["deferred"], bounced=row["bounced"]
            )
    rejects = await RejectionLog.raw(
        "SELECT date_trunc('hour', at) AS hour, count(*) AS rejected FROM rejection_logs "
        "WHERE at >= {} GROUP BY 1",
        since,
    )
    for row in rejects:
        bucket = buckets.get(row["hour"].astimezone(dt.UTC))
        if bucket:
            bucket["rejected"] = row["rejected"]
    return [{"hour": hour, **values} for hour, values in sorted(buckets.items())]


def chart_bars(traffic: list[dict[str, Any]], height: int = 120) -> list[dict[str, Any]]:
    """Bar geometry for the traffic chart (SVG attributes; CSP forbids inline styles)."""
    keys = ("delivered", "deferred", "bounced", "rejected")
    peak = max((sum(h[k] for k in keys) for h in traffic), default=0) or 1
    bars = []
    for index, hour in enumerate(traffic):
        y = height
        segments = []
        for key in keys:
            size = round(hour[key] * height / peak)
            y -= size
            segments.append({"key": key, "y": y, "height": size, "value": hour[key]})
        bars.append(
            {
                "index": index,
                "hour": hour["hour"],
                "segments": segments,
                "total": sum(hour[k] for k in keys),
            }
        )
    return bars


async def search_messages(
    sender: str = "",
    recipient: str = "",
    queue_id: str = "",
    message_id: str = "",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Delivery outcomes matching every given filter; addresses match exactly (indexed), an
    address starting with '@' matches a whole domain."""
    query = MailLog.select().order_by(MailLog.at, ascending=False).limit(limit)
    for column, value in ((MailLog.sender, sender), (MailLog.recipient, recipient)):
        value = value.strip().lower()
        if value.startswith("@"):
            query = query.where(column.ilike("%" + value.replace("%", "")))
        elif value:
            query = query.where(column == value)
    if queue_id.strip():
        query = query.where(MailLog.queue_id == queue_id.strip())
    if message_id.strip():
        query = query.where(MailLog.message_id == message_id.strip())
    if since:
        query = query.where(MailLog.at >= since)
    if until:
        query = query.where(MailLog.at < until)
    return await query


async def lifecycle(queue_id: str) -> dict[str, Any]:
    """Everything logged about one message: its context and every delivery attempt."""
    context = await LogMessage.select().where(LogMessage.queue_id == queue_id)
    events = await MailLog.select().where(MailLog.queue_id == queue_id).order_by(MailLog.at)
    return {"context": context, "events": events}
