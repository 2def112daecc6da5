"""Read-only screens: the dashboard and the audit log."""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar import Request, get
from litestar.params import FromQuery
from litestar.response import Template

from app import reports
from app.auth.sessions import SessionUser
from app.config import service
from app.postfix import pipeline
from app.web.views import is_htmx, page

Req = Request[SessionUser, Any, Any]
AUDIT_PAGE = 50


@get("/")
async def dashboard(request: Req) -> Template:
    settings = request.app.state.settings
    applied = await pipeline.applied_versions()
    return page(
        request,
        "dashboard/page.html",
        tiles=await reports.kpi_tiles(settings.retention_days),
        rejects=await reports.recent_rejects(),
        latest=await service.latest_version(),
        applied=applied,
        this_node=applied.get(settings.node_id),
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


@get("/audit")
async def audit_page(
    request: Req,
    actor: FromQuery[str] = "",
    action: FromQuery[str] = "",
    outcome: FromQuery[str] = "",
    since: FromQuery[str] = "",
    until: FromQuery[str] = "",
    page_no: FromQuery[int] = 1,
) -> Template:
    page_no = max(page_no, 1)
    filters = {"actor": actor, "action": action, "outcome": outcome, "since": since, "until": until}
    until_day = _day(until)
    rows = await reports.audit_entries(
        actor=actor.strip(),
        action=action.strip(),
        outcome=outcome.strip(),
        since=_day(since),
        until=until_day + dt.timedelta(days=1) if until_day else None,
        limit=AUDIT_PAGE + 1,
        offset=(page_no - 1) * AUDIT_PAGE,
    )
    template = "audit/_table.html" if is_htmx(request) else "audit/page.html"
    return page(
        request,
        template,
        rows=rows[:AUDIT_PAGE],
        has_more=len(rows) > AUDIT_PAGE,
        page_no=page_no,
        filters=filters,
    )
