"""Message tracking (a message's way through Postfix) and the rejection log."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from app import reports
from app.auth.sessions import SessionUser
from app.web import listing as listings
from app.web.views import is_htmx, page

Req = Request[SessionUser, Any, Any]


class Logs(Controller):
    """Message tracking and the rejection log."""

    @get("/tracking")
    async def tracking_page(
        self,
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
        since_at, until_at = listings.days(since, until)
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

    @get("/tracking/{queue_id:str}")
    async def message_page(self, request: Req, queue_id: FromPath[str]) -> Template:
        return page(
            request, "tracking/message.html", queue_id=queue_id, **await reports.lifecycle(queue_id)
        )

    @get("/rejects")
    async def rejects_page(
        self,
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
        since_at, until_at = listings.days(since, until)
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
