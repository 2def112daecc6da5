"""Read-only screens: the dashboard and the audit log."""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar import Request, get
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from app import reports
from app.agent.client import AgentRefused, AgentUnavailable
from app.auth.sessions import SessionUser
from app.cluster import pull, reconcile
from app.config import service
from app.postfix import pipeline
from app.web.views import is_htmx, page

Req = Request[SessionUser, Any, Any]
AUDIT_PAGE = 50
# A slave reports after every pull (every 10 s): a minute without one is a node not reporting.
REPORT_MAX_AGE = dt.timedelta(seconds=60)


async def _cluster(
    settings: Any, applied: dict[str, dict], latest: dict | None
) -> list[dict[str, Any]]:
    """One row per node in applied_versions, this node first. On the master every number is a
    master version (slaves report theirs), so a node behind the latest version and a slave whose
    last report is over a minute old are marked. On a slave, its own row is its local version
    and the master version that came from."""
    now = dt.datetime.now(dt.UTC)
    latest_number = latest["number"] if latest else 0
    master = settings.cluster_mode == "master"
    rows = []
    for node_id in sorted(applied, key=lambda n: (n != settings.node_id, n)):
        row = applied[node_id]
        own = node_id == settings.node_id
        entry: dict[str, Any] = {
            "node_id": node_id,
            "number": row["number"],
            "applied_at": row["applied_at"],
            "own": own,
            "master_number": None,
            "behind": master and row["number"] < latest_number,
            "ahead": master and row["number"] > latest_number,
            "reported_at": None,
            "not_reporting": False,
        }
        if master and not own:
            entry["reported_at"] = row["reported_at"]
            entry["not_reporting"] = (
                entry["reported_at"] is None or now - entry["reported_at"] > REPORT_MAX_AGE
            )
        if not master and own:
            state = await pull.applied_state(node_id)
            entry["master_number"] = state["master_number"] if state else None
        rows.append(entry)
    return rows


@get("/")
async def dashboard(request: Req) -> Template:
    settings = request.app.state.settings
    applied = await pipeline.applied_versions()
    try:
        postfix = await request.app.state.agent.call("status")
        postfix_error = None
    except (AgentUnavailable, AgentRefused) as exc:
        postfix, postfix_error = None, str(exc)
    traffic = await reports.hourly_traffic()
    latest = await service.latest_version()
    return page(
        request,
        "dashboard/page.html",
        held_for_reconcile=len(reconcile.pending(settings)),
        tiles=await reports.kpi_tiles(settings.retention_days),
        rejects=await reports.recent_rejects(),
        latest=latest,
        applied=applied,
        cluster=await _cluster(settings, applied, latest),
        this_node=applied.get(settings.node_id),
        postfix=postfix,
        postfix_error=postfix_error,
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
    page_no: FromQuery[int] = 1,
) -> Template:
    page_no = max(page_no, 1)
    filters = {"actor": actor, "action": action, "outcome": outcome, "since": since, "until": until}
    since_at, until_at = _days(since, until)
    rows = await reports.audit_entries(
        actor=actor.strip(),
        action=action.strip(),
        outcome=outcome.strip(),
        since=since_at,
        until=until_at,
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


@get("/tracking")
async def tracking_page(
    request: Req,
    sender: FromQuery[str] = "",
    recipient: FromQuery[str] = "",
    queue_id: FromQuery[str] = "",
    message_id: FromQuery[str] = "",
    since: FromQuery[str] = "",
    until: FromQuery[str] = "",
) -> Template:
    filters = {
        "sender": sender,
        "recipient": recipient,
        "queue_id": queue_id,
        "message_id": message_id,
        "since": since,
        "until": until,
    }
    searched = any(v.strip() for v in filters.values())
    since_at, until_at = _days(since, until)
    rows = (
        await reports.search_messages(
            sender=sender,
            recipient=recipient,
            queue_id=queue_id,
            message_id=message_id,
            since=since_at,
            until=until_at,
        )
        if searched
        else []
    )
    template = "tracking/_results.html" if is_htmx(request) else "tracking/page.html"
    return page(request, template, rows=rows, filters=filters, searched=searched)


@get("/tracking/{queue_id:str}")
async def message_page(request: Req, queue_id: FromPath[str]) -> Template:
    return page(
        request, "tracking/message.html", queue_id=queue_id, **await reports.lifecycle(queue_id)
    )
