"""Read-only screens: the dashboard, the audit log, message tracking and the rejection log."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from litestar import Request, get
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from app import reports
from app.agent.client import AgentRefused, AgentUnavailable
from app.alerts import state as alert_state
from app.auth.sessions import SessionUser
from app.cluster import configstate
from app.config import service
from app.replication import reconcile
from app.web import listing as listings
from app.web.views import is_htmx, page

Req = Request[SessionUser, Any, Any]


@get("/")
async def dashboard(request: Req) -> Template:
    settings = request.app.state.settings
    try:
        postfix = await request.app.state.agent.status()
        postfix_error = None
    except (AgentUnavailable, AgentRefused) as exc:
        postfix, postfix_error = None, str(exc)
    traffic = await reports.hourly_traffic()
    last = (postfix or {}).get("shadow", {}).get("last_unprotected_at")
    return page(
        request,
        "dashboard/page.html",
        held_for_reconcile=len(reconcile.pending(settings)),
        alerts=await alert_state.active(settings.node_id),
        utc=dt.UTC,
        tiles=await reports.kpi_tiles(settings.retention_days),
        rejects=await reports.recent_rejects(),
        latest=await service.newest_listed(),
        config=await configstate.current(settings),
        postfix=postfix,
        postfix_error=postfix_error,
        unprotected_age=max(0.0, time.time() - last) if isinstance(last, int | float) else None,
        bars=reports.chart_bars(traffic),
        traffic_total=sum(
            h["delivered"] + h["deferred"] + h["bounced"] + h["rejected"] for h in traffic
        ),
    )


@get("/dashboard/rejects")
async def recent_rejects(request: Req) -> Template:
    return page(request, "dashboard/_rejects.html", rejects=await reports.recent_rejects())


def _day(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _days(since: str, until: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The search window of a since/until day filter: from the start of `since` up to the end
    of `until` (both whole UTC days, either may be empty or unreadable: then open)."""
    until_day = _day(until)
    return _day(since), until_day + dt.timedelta(days=1) if until_day else None


@get("/audit")
async def audit_page(
    request: Req,
    actor: FromQuery[str] = "",
    action: FromQuery[str] = "",
    outcome: FromQuery[str] = "",
    since: FromQuery[str] = "",
    until: FromQuery[str] = "",
    sort: FromQuery[str] = "",
    direction: listings.Direction = "",
    page_no: FromQuery[int] = 1,
) -> Template:
    filters = {"actor": actor, "action": action, "outcome": outcome, "since": since, "until": until}
    entries = listings.listing(
        "/audit",
        list(reports.AUDIT_SORT),
        sort,
        direction,
        page_no,
        ("at", "desc"),
        filters,
        target="audit-table",
    )
    since_at, until_at = _days(since, until)
    rows = await reports.audit_entries(
        actor=actor.strip(),
        action=action.strip(),
        outcome=outcome.strip(),
        since=since_at,
        until=until_at,
        limit=entries.size + 1,
        offset=entries.offset,
        sort=entries.sort,
        descending=entries.descending,
    )
    template = "audit/_table.html" if is_htmx(request) else "audit/page.html"
    return page(request, template, entries=entries.with_rows(rows), filters=filters)


@get("/tracking")
async def tracking_page(
    request: Req,
    sender: FromQuery[str] = "",
    recipient: FromQuery[str] = "",
    queue_id: FromQuery[str] = "",
    message_id: FromQuery[str] = "",
    since: FromQuery[str] = "",
    until: FromQuery[str] = "",
    sort: FromQuery[str] = "",
    direction: listings.Direction = "",
    page_no: FromQuery[int] = 1,
) -> Template:
    filters = {
        "sender": sender,
        "recipient": recipient,
        "queue_id": queue_id,
        "message_id": message_id,
        "since": since,
        "until": until,
    }
    results = listings.listing(
        "/tracking",
        list(reports.MAIL_SORT),
        sort,
        direction,
        page_no,
        ("at", "desc"),
        filters,
        target="tracking-results",
    )
    searched = any(v.strip() for v in filters.values())
    since_at, until_at = _days(since, until)
    if searched:
        rows = await reports.search_messages(
            sender=sender,
            recipient=recipient,
            queue_id=queue_id,
            message_id=message_id,
            since=since_at,
            until=until_at,
            limit=results.size + 1,
            offset=results.offset,
            sort=results.sort,
            descending=results.descending,
        )
        results = results.with_rows(rows)
    template = "tracking/_results.html" if is_htmx(request) else "tracking/page.html"
    return page(request, template, results=results, filters=filters, searched=searched)


@get("/rejects")
async def rejects_page(
    request: Req,
    since: FromQuery[str] = "",
    until: FromQuery[str] = "",
    sort: FromQuery[str] = "",
    direction: listings.Direction = "",
    page_no: FromQuery[int] = 1,
) -> Template:
    """The rejection log: every SMTP transaction Postfix refused, a page at a time."""
    filters = {"since": since, "until": until}
    rejects = listings.listing(
        "/rejects",
        list(reports.REJECT_SORT),
        sort,
        direction,
        page_no,
        ("at", "desc"),
        filters,
        target="rejects-table",
    )
    since_at, until_at = _days(since, until)
    rows = await reports.rejections(
        rejects.sort,
        rejects.descending,
        limit=rejects.size + 1,
        offset=rejects.offset,
        since=since_at,
        until=until_at,
    )
    template = "rejects/_table.html" if is_htmx(request) else "rejects/page.html"
    return page(request, template, rejects=rejects.with_rows(rows), filters=filters)


@get("/tracking/{queue_id:str}")
async def message_page(request: Req, queue_id: FromPath[str]) -> Template:
    return page(
        request, "tracking/message.html", queue_id=queue_id, **await reports.lifecycle(queue_id)
    )
