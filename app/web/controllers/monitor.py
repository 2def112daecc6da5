"""The dashboard (with its recent rejections fragment) and the health check."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from litestar import Controller, Request, get
from litestar.response import Template

from app import reports
from app.agent.client import AgentRefused, AgentUnavailable
from app.alerts import state as alert_state
from app.auth.sessions import SessionUser
from app.cluster import configstate
from app.config import service
from app.messages import message_of
from app.replication import reconcile
from app.web.views import page

Req = Request[SessionUser, Any, Any]


class Monitor(Controller):
    """The dashboard and the health check."""

    @get("/")
    async def dashboard(self, request: Req) -> Template:
        settings = request.app.state.settings
        try:
            postfix = await request.app.state.agent.status()
            postfix_error = None
        except (AgentUnavailable, AgentRefused) as exc:
            postfix, postfix_error = None, message_of(exc)
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
    async def recent_rejects(self, request: Req) -> Template:
        return page(request, "dashboard/_rejects.html", rejects=await reports.recent_rejects())

    @get("/healthz", opt={"public": True}, exclude_from_auth=True)
    async def healthz(
        self,
    ) -> dict[str, str]:
        return {"status": "ok"}
