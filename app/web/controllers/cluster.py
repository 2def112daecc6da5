"""The cluster screen (both nodes side by side, the planned switchover), this node's status for
the peer (GET /api/cluster/status) and the same figures for Prometheus (/metrics)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.response import Response, Template

from app.cluster import metrics, status, switchover
from app.web.auth import source_ip
from app.web.views import is_htmx, page

Req = Request[Any, Any, Any]


def _context(request: Req) -> dict[str, Any]:
    # Opened through the VIP, the page's connection breaks when the VIP leaves this node.
    return {"via_vip": request.url.hostname == request.app.state.settings.vip_address}


async def _view(request: Req) -> status.Status:
    return await status.cluster_view(request.app.state.settings, request.app.state.agent)


@get("/cluster")
async def cluster_page(request: Req) -> Template:
    """The panel alone for HTMX (the dashboard loads it after the page), else the whole page."""
    template = "cluster/_panel.html" if is_htmx(request) else "cluster/page.html"
    return page(request, template, view=await _view(request), **_context(request))


@post("/cluster/switchover", opt={"role": "admin"})
async def run_switchover(request: Req) -> Template:
    steps = await switchover.run(
        request.app.state.settings,
        request.app.state.agent,
        request.user.username,
        source_ip(request),
    )
    if is_htmx(request):
        return page(request, "cluster/_report.html", steps=steps)
    return page(
        request, "cluster/page.html", view=await _view(request), steps=steps, **_context(request)
    )


@get(status.STATUS_PATH, opt={"api": "cluster"})
async def api_status(request: Req) -> status.Status:
    return await status.node_status(request.app.state.settings, request.app.state.agent)


@get("/metrics", opt={"api": "read"})
async def prometheus(request: Req) -> Response[str]:
    return Response(metrics.render(await _view(request)), media_type=metrics.CONTENT_TYPE)
