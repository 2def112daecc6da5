"""Config versions: list, view, side-by-side diff, rollback, and Test / Apply."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Response, Template

from app import reports
from app.auth.sessions import SessionUser
from app.cluster import configstate
from app.config import service
from app.config import snapshot as snap
from app.messages import Message
from app.postfix import pipeline
from app.web import listing as listings
from app.web.controllers.config import actor
from app.web.views import done, is_htmx, page

Req = Request[SessionUser, Any, Any]


async def _latest_number() -> int:
    latest = await service.latest_version()
    if latest is None:
        raise service.NotFound(
            Message("There is no config version yet: add a sender domain first.")
        )
    return int(latest["number"])


def _report(request: Req, report: pipeline.TestReport, applied: bool) -> Template:
    template = "versions/_report.html" if is_htmx(request) else "versions/report.html"
    return page(request, template, report=report, applied=applied)


class Versions(Controller):
    """The config versions, and Test / Apply of the newest."""

    @get("/versions")
    async def versions_page(
        self,
        request: Req,
        sort: FromQuery[str] = "",
        direction: listings.Direction = "",
        page_no: FromQuery[int] = 1,
    ) -> Template:
        versions = listings.listing(
            "/versions", list(reports.VERSION_SORT), sort, direction, page_no, ("number", "desc")
        )
        rows = await reports.config_versions(
            versions.sort, versions.descending, versions.size + 1, versions.offset
        )
        return page(
            request,
            "versions/page.html",
            versions=versions.with_rows(rows),
            latest=await service.newest_listed(),
            config=await configstate.current(request.app.state.settings),
        )

    @get("/versions/{number:int}")
    async def version_page(self, request: Req, number: FromPath[int]) -> Template:
        version = await service.get_version(number)
        return page(
            request,
            "versions/view.html",
            version=version,
            lines=snap.describe(version["snapshot"]),
            latest=await service.newest_listed(),
        )

    @get("/versions/diff")
    async def diff_page(
        self, request: Req, a: FromQuery[int | None] = None, b: FromQuery[int | None] = None
    ) -> Template:
        if a is None or b is None:
            return page(request, "versions/diff.html", rows=None, a=a, b=b)
        old, new = await service.get_version(min(a, b)), await service.get_version(max(a, b))
        rows = snap.side_by_side(old["snapshot"], new["snapshot"])
        return page(request, "versions/diff.html", rows=rows, a=old["number"], b=new["number"])

    @post("/versions/{number:int}/rollback", opt={"role": "operator", "master_only": True})
    async def rollback(self, request: Req, number: FromPath[int]) -> Response[Any]:
        new = await service.rollback(actor(request), number)
        return done(request, f"/versions/{new}")

    @post("/config/test", opt={"role": "operator"})
    async def test_config(self, request: Req) -> Template:
        report = await pipeline.test_version(
            await _latest_number(),
            request.app.state.box,
            request.app.state.agent,
            request.app.state.settings.node_id,
        )
        return _report(request, report, applied=False)

    @post("/config/apply", opt={"role": "operator"})
    async def apply_config(self, request: Req) -> Template:
        report = await pipeline.apply_version(
            await _latest_number(),
            request.app.state.box,
            request.app.state.agent,
            request.app.state.settings.node_id,
            actor(request),
        )
        return _report(request, report, applied=report.ok)
