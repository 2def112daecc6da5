"""Read models for the dashboard and the audit screen (queries only, no changes)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.db.tables import AuditLog, MailLog, RejectionLog


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
