"""The dashboard (with its fragments: recent rejections, both nodes' traffic) and the health
check."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from litestar import Controller, Request, get
from litestar.response import Template

from app import reports
from app.alerts import state as alert_state
from app.auth.sessions import SessionUser
from app.cluster import configstate, status
from app.config import service
from app.replication import reconcile
from app.web.views import is_htmx, page

Req = Request[SessionUser, Any, Any]


class Monitor(Controller):
    """The dashboard and the health check."""

    @get("/")
    async def dashboard(self, request: Req) -> Template:
        settings = request.app.state.settings
        agent = request.app.state.agent
        # Once for the page: the queue panel and this node's traffic both show it.
        postfix, postfix_error = answer = await status.agent_status(agent)
        traffic = await reports.hourly_traffic()
        shadow = postfix.get("shadow") if postfix else None
        last = shadow.get("last_unprotected_at") if shadow else None
        return page(
            request,
            "dashboard/page.html",
            held_for_reconcile=len(reconcile.pending(settings)),
            alerts=await alert_state.active(settings.node_id),
            utc=dt.UTC,
            # The peer's figures come in a fragment loaded after the page (GET /dashboard/traffic).
            this=await status.node_traffic(settings, agent, settings.retention_days, answer),
            peer=None,
            total={},
            rejects=await reports.recent_rejects(),
            latest=await service.newest_listed(),
            config=await configstate.current(settings),
            postfix=postfix,
            postfix_error=postfix_error,
            unprotected_age=max(0.0, time.time() - last) if isinstance(last, int | float) else None,
            bars=reports.chart_bars(traffic),
            chart_width=len(traffic) * reports.CHART_BAR_WIDTH,
            traffic_total=sum(
                h["delivered"] + h["deferred"] + h["bounced"] + h["rejected"] for h in traffic
            ),
        )

    @get("/dashboard/rejects")
    async def recent_rejects(self, request: Req) -> Template:
        return page(request, "dashboard/_rejects.html", rejects=await reports.recent_rejects())

    @get("/dashboard/traffic")
    async def traffic(self, request: Req) -> Template:
        """Both nodes' traffic side by side: the fragment for the dashboard, or a page of its own
        (the dashboard's link without JavaScript). An unreachable peer costs PEER_TIMEOUT at
        most."""
        settings = request.app.state.settings
        this, peer = await asyncio.gather(
            status.node_traffic(settings, request.app.state.agent, settings.retention_days),
            status.peer_traffic(settings, settings.retention_days),
        )
        template = "dashboard/_traffic.html" if is_htmx(request) else "dashboard/traffic.html"
        return page(
            request, template, this=this, peer=peer, total=status.traffic_totals(this, peer)
        )

    @get("/healthz", opt={"public": True}, exclude_from_auth=True)
    async def healthz(
        self,
    ) -> dict[str, str]:
        return {"status": "ok"}
