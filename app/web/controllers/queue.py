"""The queue page: what Postfix holds right now, and the operator's actions on it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Response, Template

from app import audit
from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.auth.sessions import SessionUser
from app.config.service import Actor
from app.messages import message_of
from app.postfix import queue
from app.replication import reconcile
from app.web import listing as listings
from app.web.auth import source_ip
from app.web.views import done, error_page, is_htmx, page

Req = Request[SessionUser, Any, Any]
# The agent reads at most this many entries of `postqueue -j`; the page shows them 50 at a time.
LIST_LIMIT = 100_000
SORT_KEYS: dict[str, Any] = {
    "queue_id": lambda e: e.queue_id,
    "queue_name": lambda e: e.queue_name,
    "arrival": lambda e: e.arrival,
    "size": lambda e: e.size,
    "sender": lambda e: e.sender.lower(),
    "recipients": lambda e: ",".join(e.recipients).lower(),
}


def offered(entry: queue.QueueEntry) -> list[str]:
    """The actions that can work on this message: release only what is on hold, hold and
    requeue only what is not, flush (deliver now) only what is deferred."""
    held = entry.queue_name == "hold"
    can = {
        "hold": not held,
        "release": held,
        "delete": True,
        "requeue": not held,
        "flush": entry.queue_name == "deferred",
    }
    return [action for action in queue.ACTIONS if can[action]]


async def _context(
    request: Req,
    sender: str = "",
    recipient: str = "",
    queue_name: str = "",
    reason: str = "",
    sort: str = "",
    direction: str = "",
    page_no: int = 1,
) -> dict[str, Any]:
    filters = {"sender": sender, "recipient": recipient, "queue_name": queue_name, "reason": reason}
    shown, total, error = await listing(request.app.state.agent, **filters)
    rows = listings.listing(
        "/queue",
        list(SORT_KEYS),
        sort,
        direction,
        page_no,
        ("arrival", "asc"),
        filters,
        target="queue-table",
    ).of(shown, SORT_KEYS)
    return {
        "entries": rows,
        "total": total,
        "filters": filters,
        "error": error,
        "now": dt.datetime.now(dt.UTC),
        "limit": LIST_LIMIT,
        "offered": offered,
        "can_flush": total > 0,
    }


async def listing(
    agent: AgentClient, sender: str, recipient: str, queue_name: str, reason: str
) -> tuple[list[queue.QueueEntry], int, str | None]:
    """The queue entries that match the filters, how many the queue holds (up to LIST_LIMIT),
    and why the agent could not list them (None when it could)."""
    error, entries = None, []
    try:
        raw = await agent.queue_list(limit=LIST_LIMIT)
        entries = [queue.QueueEntry.from_postqueue(r) for r in raw]
    except (AgentUnavailable, AgentRefused) as exc:
        error = message_of(exc)
    shown = [
        e
        for e in entries
        if queue.matches(e, sender.strip(), recipient.strip(), queue_name, reason.strip())
    ]
    return shown, len(entries), error


async def run_action(agent: AgentClient, actor: Actor, action: str, queue_id: str | None) -> None:
    """One queue action (all of the queue when `queue_id` is None: flush), audited whether it
    worked or the agent raised AgentUnavailable or AgentRefused (raised on)."""
    target = queue_id or "*"
    try:
        await (agent.queue_action(action, queue_id) if queue_id else agent.flush_all())
    except (AgentUnavailable, AgentRefused) as exc:
        await audit.record(
            actor.username,
            f"queue.{action}",
            target,
            actor.source_ip,
            "failed",
            after={"error": str(exc)},
        )
        raise
    await audit.record(actor.username, f"queue.{action}", target, actor.source_ip)


async def _act(request: Req, action: str, queue_id: str | None) -> Response[Any]:
    actor = Actor(request.user.username, source_ip(request))
    try:
        await run_action(request.app.state.agent, actor, action, queue_id)
    except (AgentUnavailable, AgentRefused) as exc:
        return error_page(
            request,
            409 if isinstance(exc, AgentRefused) else 503,
            "Queue",
            message_of(exc),
            page_template="queue/page.html",
            **await _context(request),
        )
    return done(request, "/queue")


class Queue(Controller):
    """The queue page and the operator's actions on the queue."""

    @get("/queue")
    async def queue_page(
        self,
        request: Req,
        sender: FromQuery[str] = "",
        recipient: FromQuery[str] = "",
        queue_name: FromQuery[str] = "",
        reason: FromQuery[str] = "",
        sort: FromQuery[str] = "",
        direction: listings.Direction = "",
        page_no: FromQuery[int] = 1,
    ) -> Template:
        ctx = await _context(
            request, sender, recipient, queue_name, reason, sort, direction, page_no
        )
        template = "queue/_table.html" if is_htmx(request) else "queue/page.html"
        return page(request, template, **ctx)

    @post("/queue/{queue_id:str}/{action:str}", opt={"role": "operator"})
    async def queue_action(
        self, request: Req, queue_id: FromPath[str], action: FromPath[str]
    ) -> Response[Any]:
        if action not in queue.ACTIONS:
            return error_page(request, 404, "Not found", "Not found")
        return await _act(request, action, queue_id)

    @post("/queue/flush", opt={"role": "operator"})
    async def flush_queue(self, request: Req) -> Response[Any]:
        return await _act(request, "flush", None)

    @post("/queue/release-held", opt={"role": "operator"})
    async def release_held(self, request: Req) -> Response[Any]:
        """The alert's button: the peer could not be asked, the operator releases the held mail."""
        try:
            await reconcile.release_held(
                request.app.state.settings,
                request.app.state.agent,
                request.user.username,
                source_ip(request),
            )
        except (AgentUnavailable, AgentRefused) as exc:
            return error_page(request, 503, "Queue", message_of(exc))
        return done(request, "/")
