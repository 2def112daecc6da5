"""Read models for the dashboard, the audit, tracking, rejection and version lists (queries
only, no changes). Lists take a sort column (a key of the list's own column map, checked by
the caller) and a direction, a limit and an offset."""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from piccolo.columns.combination import WhereRaw

from app.db.tables import AuditLog, ConfigVersion, LogMessage, MailLog, RejectionLog

# The columns each list sorts by; the id breaks ties, so that pages never overlap.
AUDIT_SORT = {
    "at": AuditLog.at,
    "actor": AuditLog.actor,
    "action": AuditLog.action,
    "target": AuditLog.target,
    "outcome": AuditLog.outcome,
    "source_ip": AuditLog.source_ip,
}
MAIL_SORT = {
    "at": MailLog.at,
    "queue_id": MailLog.queue_id,
    "sender": MailLog.sender,
    "recipient": MailLog.recipient,
    "status": MailLog.status,
    "node_id": MailLog.node_id,
}
REJECT_SORT = {
    "at": RejectionLog.at,
    "client": RejectionLog.client,
    "sender": RejectionLog.sender,
    "recipient": RejectionLog.recipient,
    "code": RejectionLog.code,
    "node_id": RejectionLog.node_id,
}
VERSION_SORT = {
    "number": ConfigVersion.number,
    "created_at": ConfigVersion.created_at,
    "author": ConfigVersion.author,
    "comment": ConfigVersion.comment,
}


def _sorted(query: Any, column: Any, tiebreak: Any, descending: bool) -> Any:
    return query.order_by(column, ascending=not descending).order_by(
        tiebreak, ascending=not descending
    )


# The tiles' figures are sums of log_totals, the five-minute totals that triggers on the log
# tables keep exact (log_totals_bucket(): periods from 2000-01-01 00:00 UTC on). A window takes
# every period that began at or after its start rounded down to a period: the last hour covers
# 60 to 65 minutes. Each queue ID counts as accepted once, in the period of its latest row.
# Counting the minutes before the first whole period from the rows themselves instead (each
# queue ID's latest row looked up in every partition since) took 3 to 5 ms of database time
# per window at 10 million rows, most of a dashboard's; these sums take a fraction of one.
# Each window sums its own rows (a lateral subquery per window): joining the windows to
# log_totals and grouping the result hashed every row of the retention window once per
# window it fell in, 3.2 ms a dashboard at 14 days of five-minute rows against 1.6.
_TILES = (
    "SELECT w.period, t.* FROM unnest({}::text[], {}::timestamptz[]) WITH ORDINALITY"
    " AS w(period, since, n) CROSS JOIN LATERAL (SELECT"
    " coalesce(sum(messages), 0)::bigint AS accepted,"
    " coalesce(sum(sent), 0)::bigint AS delivered,"
    " coalesce(sum(deferred), 0)::bigint AS deferred,"
    " coalesce(sum(bounced + expired), 0)::bigint AS bounced,"
    " coalesce(sum(rejected), 0)::bigint AS rejected"
    " FROM log_totals WHERE period_start >= log_totals_bucket(w.since)) AS t"
    " ORDER BY w.n"
)


def tile_spans(retention_days: int) -> list[tuple[str, dt.timedelta]]:
    """The dashboard's time windows, as both nodes count them: 1 h, 24 h, the retention period."""
    return [
        ("1h", dt.timedelta(hours=1)),
        ("24h", dt.timedelta(hours=24)),
        ("retention", dt.timedelta(days=retention_days)),
    ]


async def kpi_tiles(retention_days: int) -> list[dict[str, Any]]:
    """Accepted, delivered, deferred (deferral events: one per recipient and attempt), bounced,
    rejected for each of tile_spans(), from the period holding its start on."""
    now = dt.datetime.now(dt.UTC)
    spans = tile_spans(retention_days)
    return await MailLog.raw(_TILES, [key for key, _ in spans], [now - span for _, span in spans])


# Every dashboard and its refresh every 15 s run this. Plain SQL: Piccolo's select took 0.2 ms
# more of the web app's CPU. Without parameters: a statement without any keeps its plan on a
# connection whatever plan_cache_mode says; with the limit as one, each run planned the sort
# over every day partition again (0.3 ms).
_RECENT_REJECTS = "SELECT * FROM rejection_logs ORDER BY at DESC LIMIT 20"


async def recent_rejects() -> list[dict[str, Any]]:
    """The 20 newest rejections."""
    return await RejectionLog.raw(_RECENT_REJECTS)


async def rejections(
    sort: str = "at",
    descending: bool = True,
    limit: int = 50,
    offset: int = 0,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    query = _sorted(RejectionLog.select(), REJECT_SORT[sort], RejectionLog.id, descending)
    if since:
        query = query.where(RejectionLog.at >= since)
    if until:
        query = query.where(RejectionLog.at < until)
    return await query.limit(limit).offset(offset)


async def config_versions(
    sort: str = "number", descending: bool = True, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    query = ConfigVersion.select(
        ConfigVersion.number,
        ConfigVersion.author,
        ConfigVersion.comment,
        ConfigVersion.created_at,
        ConfigVersion.checksum,
    )
    return (
        await _sorted(query, VERSION_SORT[sort], ConfigVersion.number, descending)
        .limit(limit)
        .offset(offset)
    )


async def audit_entries(
    actor: str = "",
    action: str = "",
    outcome: str = "",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 50,
    offset: int = 0,
    sort: str = "at",
    descending: bool = True,
) -> list[dict[str, Any]]:
    query = _sorted(AuditLog.select(), AUDIT_SORT[sort], AuditLog.id, descending)
    query = query.limit(limit).offset(offset)
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
    """Per hour of the last `hours`, oldest first: delivered, deferred, bounced and rejected
    (zeros kept). PostgreSQL makes the hours: filling them in Python cost every dashboard
    0.2 ms more of the web app's CPU."""
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return await MailLog.raw(
        "SELECT h.hour, coalesce(sum(t.sent), 0)::bigint AS delivered,"
        " coalesce(sum(t.deferred), 0)::bigint AS deferred,"
        " coalesce(sum(t.bounced + t.expired), 0)::bigint AS bounced,"
        " coalesce(sum(t.rejected), 0)::bigint AS rejected"
        " FROM generate_series({}::timestamptz, {}::timestamptz, interval '1 hour') AS h(hour)"
        " LEFT JOIN log_totals AS t"
        " ON t.period_start >= h.hour AND t.period_start < h.hour + interval '1 hour'"
        " GROUP BY h.hour ORDER BY h.hour",
        now - dt.timedelta(hours=hours - 1),
        now,
    )


class ChartSegment(NamedTuple):
    key: str
    y: int
    height: int


class ChartBar(NamedTuple):
    x: int
    title: str
    tick: str
    segments: tuple[ChartSegment, ...]


# SVG units a bar takes (the chart's width is as many per hour).
CHART_BAR_WIDTH = 20


def chart_bars(traffic: list[dict[str, Any]], height: int = 120) -> list[ChartBar]:
    """Bar geometry for the traffic chart (SVG attributes; CSP forbids inline styles). The
    chart is most of what the dashboard's template writes, so every figure it shows is made
    here, once, and a bar holds only its visible segments."""
    keys = ("delivered", "deferred", "bounced", "rejected")
    peak = max((sum(h[k] for k in keys) for h in traffic), default=0) or 1
    bars = []
    for index, hour in enumerate(traffic):
        y = height
        segments = []
        for key in keys:
            size = round(hour[key] * height / peak)
            y -= size
            if size > 0:
                segments.append(ChartSegment(key, y, size))
        at: dt.datetime = hour["hour"]
        bars.append(
            ChartBar(
                x=index * CHART_BAR_WIDTH + 2,
                title=f"{at:%H}:00: {sum(hour[k] for k in keys)}",
                tick=f"{at:%H}" if index % 3 == 0 else "",
                segments=tuple(segments),
            )
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
    offset: int = 0,
    sort: str = "at",
    descending: bool = True,
) -> list[dict[str, Any]]:
    """Delivery outcomes matching every given filter, newest first unless `sort` says
    otherwise; addresses match exactly, an address starting with '@' matches a whole domain.
    Each finds its newest rows by an index on (address, at) or (the address's domain, at): a
    migration's expressions, kept identical.

    A search on one field, newest first (nearly every search an operator makes), runs through
    mail_logs_newest, whose plans are made once per connection and cannot mislead (migration
    2026-12-07T04:00). Every other search is planned for its values, on the web app's
    connections (app.db.pool.PAGE_SETTINGS). A newest-first search can walk each day's (at)
    index backwards, filtering rows, instead of reading the (address, at) index; for an
    application that stopped sending 12 days ago that walk reads every row since. Two things
    lead PostgreSQL there, and those connections set both aside. A generic plan, which it keeps
    after a few runs of one statement, is made without the address: where a relay has few
    senders it takes any one of them for a large share of the rows (20 s a search at 10 million
    rows, scripts/bench gui); so every search is planned for its values. And the default cost
    of a page read out of order (4, for spinning disks) makes even a plan made for the address
    prefer, in the day the application stopped, the (at) index, whose rows lie in the order
    they were written (13 ms against 0.6 ms at 10 million rows); the log's recent days are in
    memory or on SSD, where such a read costs about what reading the next page does."""
    matches = _matches(sender, recipient, queue_id, message_id)
    if len(matches) == 1 and not since and not until and sort == "at" and descending:
        field, value = matches[0]
        return await MailLog.raw(
            "SELECT * FROM mail_logs_newest({}, {}, {}, {})", field, value, limit, offset
        )
    query = _sorted(MailLog.select(), MAIL_SORT[sort], MailLog.id, descending)
    query = query.limit(limit).offset(offset)
    for field, value in matches:
        if field.endswith("_domain"):
            column = field.removesuffix("_domain")
            # The part after the last '@', as mail_logs_{column}_domain_at indexes it.
            query = query.where(
                WhereRaw(
                    f"lower(split_part({column}, '@', -1)) = {{}} AND {column} LIKE '%@%'",
                    value,
                )
            )
        else:
            query = query.where(getattr(MailLog, field) == value)
    if since:
        query = query.where(MailLog.at >= since)
    if until:
        query = query.where(MailLog.at < until)
    return await query


def _matches(sender: str, recipient: str, queue_id: str, message_id: str) -> list[tuple[str, str]]:
    """What a search matches, as (field, value), the fields named as mail_logs_newest names
    them: an address in lower case, as ingestion stores it; '@domain' as the field's domain
    ('sender_domain', 'recipient_domain'); a queue ID or Message-ID as given. Blank ones
    are left out."""
    matches = []
    for column, address in (("sender", sender), ("recipient", recipient)):
        address = address.strip().lower()
        if address.startswith("@"):
            matches.append((f"{column}_domain", address[1:]))
        elif address:
            matches.append((column, address))
    for column, identifier in (("queue_id", queue_id), ("message_id", message_id)):
        if identifier.strip():
            matches.append((column, identifier.strip()))
    return matches


async def lifecycle(queue_id: str) -> dict[str, Any]:
    """Everything logged about one message: its context and every delivery attempt."""
    context = await LogMessage.select().where(LogMessage.queue_id == queue_id)
    events = await MailLog.select().where(MailLog.queue_id == queue_id).order_by(MailLog.at)
    return {"context": context, "events": events}
