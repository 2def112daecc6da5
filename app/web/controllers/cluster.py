"""The cluster screen (both nodes side by side, the planned switchover with its steps shown as
they happen), this node's status and traffic for the peer (GET /api/cluster/status and
/api/cluster/traffic) and the same figures for Prometheus (/metrics)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, QueryParameter
from litestar.response import Response, Template

from app.agent.client import AgentClient
from app.cluster import metrics, status, switchover
from app.messages import Message
from app.settings import Settings
from app.web.auth import source_ip
from app.web.views import done, is_htmx, page

Req = Request[Any, Any, Any]
ADMIN = {"role": "admin"}
# Finished runs kept for their pages (this process's memory: a restart forgets them; the audit
# log keeps every report).
KEPT_RUNS = 20
log = logging.getLogger(__name__)


@dataclass
class SwitchoverRun:
    """One switchover started from the GUI, as far as it has got."""

    id: str
    actor: str
    steps: list[switchover.Step] = field(default_factory=list)
    running: str | None = None  # the step under way
    finished: bool = False
    error: str | None = None  # the run itself broke (not a failed step): why
    # Held here: the event loop keeps only a weak reference to a task, which could otherwise
    # be collected while it runs.
    task: asyncio.Task[None] | None = None

    def progress(self, steps: list[switchover.Step], running: str) -> None:
        self.steps, self.running = steps, running

    async def execute(self, settings: Settings, agent: AgentClient, ip: str) -> None:
        try:
            self.steps = await switchover.run(
                settings, agent, self.actor, ip, progress=self.progress
            )
        except Exception:
            log.exception("the switchover %s broke off", self.id)
            self.error = Message("The switchover broke off: see the server's log.")
        finally:
            self.running, self.finished = None, True


def _runs(request: Req) -> dict[str, SwitchoverRun]:
    runs: dict[str, SwitchoverRun] = request.app.state.switchovers
    return runs


def _current(request: Req) -> SwitchoverRun | None:
    return next((run for run in _runs(request).values() if not run.finished), None)


def _context(request: Req) -> dict[str, Any]:
    # Opened through the VIP, the page's connection breaks when the VIP leaves this node.
    return {"via_vip": request.url.hostname == request.app.state.settings.vip_address}


async def _view(request: Req) -> status.Status:
    return await status.cluster_view(request.app.state.settings, request.app.state.agent)


class Cluster(Controller):
    """The cluster screen and the planned switchover."""

    @get("/cluster")
    async def cluster_page(self, request: Req) -> Template:
        """The panel alone for HTMX (the dashboard loads it after the page), else the whole page,
        with a switchover under way if one is."""
        if is_htmx(request):
            return page(
                request, "cluster/_panel.html", view=await _view(request), **_context(request)
            )
        return page(
            request,
            "cluster/page.html",
            view=await _view(request),
            run=_current(request),
            **_context(request),
        )

    @post("/cluster/switchover", opt=ADMIN)
    async def run_switchover(self, request: Req) -> Response[Any]:
        """Starts the switchover and answers at once: its steps are shown as they happen on
        /cluster/switchover/{id} (HTMX polls it, a plain page refreshes itself)."""
        run = _current(request)
        if run is None:
            run = SwitchoverRun(secrets.token_urlsafe(8), request.user.username)
            runs = _runs(request)
            runs[run.id] = run
            for old in [r for r in runs.values() if r.finished][:-KEPT_RUNS]:
                del runs[old.id]
            state = request.app.state
            run.task = asyncio.create_task(
                run.execute(state.settings, state.agent, source_ip(request))
            )
        if is_htmx(request):
            return page(request, "cluster/_report.html", run=run)
        return done(request, f"/cluster/switchover/{run.id}")

    @get("/cluster/switchover/{run_id:str}", opt=ADMIN)
    async def switchover_page(self, request: Req, run_id: FromPath[str]) -> Template:
        run = _runs(request).get(run_id)
        if run is None:
            raise NotFoundException()
        if is_htmx(request):
            return page(request, "cluster/_report.html", run=run)
        return page(
            request, "cluster/page.html", view=await _view(request), run=run, **_context(request)
        )


class NodeStatus(Controller):
    """This node's status for the peer, and the same figures for Prometheus."""

    @get(status.STATUS_PATH, opt={"api": "cluster"})
    async def api_status(self, request: Req) -> status.Status:
        return status.as_json(
            await status.node_status(request.app.state.settings, request.app.state.agent)
        )

    @get(status.TRAFFIC_PATH, opt={"api": "cluster"})
    async def api_traffic(
        self, request: Req, days: Annotated[int | None, QueryParameter(ge=1, le=3650)] = None
    ) -> status.Status:
        """This node's traffic for the asking node's dashboard windows (its retention days;
        without them, this node's own)."""
        settings = request.app.state.settings
        return await status.node_traffic(
            settings, request.app.state.agent, days or settings.retention_days
        )

    @get("/metrics", opt={"api": "read"})
    async def prometheus(self, request: Req) -> Response[str]:
        return Response(metrics.render(await _view(request)), media_type=metrics.CONTENT_TYPE)
