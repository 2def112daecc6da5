"""Return: a node that boots (or leaves MASTER) holds a stale queue. Before its
Postfix delivers anything it puts its whole queue on hold, asks the peer which of its queue IDs
the peer took over (queue_imports), deletes exactly those, and releases the rest: mail it
accepted after its last sync is delivered late, not lost, and nothing is delivered twice. If
the peer cannot be asked, everything stays held and the dashboard says so; releasing it is one
audited click (or `mailrelay reconcile --release`).

A node that leaves MASTER with Postfix running holds its queue the moment keepalived says so
(hold_on_leaving), before the peer is asked or has imported anything: what the peer is about to
import is then not delivered here meanwhile. The reconcile that follows releases it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app import audit
from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.cluster import locks, status
from app.cluster.peer import PeerApi, PeerError, json_object, peer_request
from app.messages import Message, message_of
from app.replication import promotion
from app.settings import Settings

log = logging.getLogger("mailrelay.reconcile")
# How long a node that left MASTER waits for the peer to become MASTER, and then for a MASTER
# peer to finish importing its replica (87 s for 100,000 messages in the lab: scripts/bench
# sync): as long as the peer's promotion may take before it writes it as failed. Until then the
# peer's list of what it took over is short.
LEAVE_WAIT_SECONDS = 60.0
IMPORT_WAIT_SECONDS = promotion.TAKEOVER_WAIT_SECONDS
LEAVE_POLL_SECONDS = 1.0
# How long a reconcile asks again a peer that is still writing what it took over: less than the
# boot reconcile unit's 120 s start timeout. The queue here is held all along.
ASK_WAIT_SECONDS = 90.0
# A peer MASTER since this long before this node left MASTER was MASTER at the same time: a
# partition. More than the clock skew of NTP-synced nodes, less than the 3 advert intervals
# (plus skew) a split brain needs to begin.
SPLIT_BRAIN_MARGIN = dt.timedelta(seconds=2)


@dataclass
class ReconcileResult:
    outcome: str  # nothing | reconciled | held
    held: int = 0
    deleted: int = 0
    released: int = 0
    detail: str = ""


def pending_file(settings: Settings) -> Path:
    """The IDs held for a reconciliation that could not finish (what the alert is about)."""
    return settings.state_dir / "held-for-reconcile.json"


def leaving_file(settings: Settings) -> Path:
    """The IDs held when this node left MASTER, until the reconcile that follows settles them.
    On disk, so that a reader restarted meanwhile (or a reboot) does not leave them held."""
    return settings.state_dir / "held-on-leaving.json"


def _ids(path: Path) -> list[str]:
    try:
        return list(json.loads(path.read_text()))
    except (OSError, ValueError):
        return []


def pending(settings: Settings) -> list[str]:
    return _ids(pending_file(settings))


def _remember(path: Path, ids: Iterable[str]) -> None:
    """Add IDs to a list file, keeping what another step added (no await in between)."""
    wanted = set(_ids(path)) | set(ids)
    if wanted:
        path.write_text(json.dumps(sorted(wanted)))


def _forget(path: Path, ids: Iterable[str]) -> None:
    """Drop IDs from a list file, keeping any another step added since they were read."""
    rest = set(_ids(path)) - set(ids)
    if rest:
        path.write_text(json.dumps(sorted(rest)))
    else:
        path.unlink(missing_ok=True)


# A queue ID and its quotes take about 20 bytes: room for a queue of several hundred thousand.
MAX_IMPORTED_BYTES = 16 * 1024 * 1024
# The whole answer of the list of imports: 16 MiB at a slow link's pace fits.
IMPORTS_ANSWER_SECONDS = 60.0
# The peer's reason for not answering yet is one sentence; it is shown on the dashboard.
MAX_REFUSAL_BYTES = 4096
MAX_DETAIL_CHARS = 300


async def peer_imports(settings: Settings) -> set[str]:
    peer = PeerApi.from_settings(settings)
    what = Message("the peer's list of imports")
    async with peer_request(
        peer.url,
        peer.token,
        peer.tls,
        "GET",
        "/api/queue/imported",
        answer_seconds=IMPORTS_ANSWER_SECONDS,
    ) as response:
        if response.status_code != 200:
            raise await _refusal(response, what)
        body = await json_object(response, MAX_IMPORTED_BYTES, what)
    ids = body.get("queue_ids", [])
    if not isinstance(ids, list):
        raise PeerError(Message("the peer's list of imports has no queue_ids list"))
    return {str(i) for i in ids}


class PeerStillImporting(PeerError):
    """The peer is MASTER and has not written yet what it took over of this node's queue."""


async def _refusal(response: httpx.Response, what: Message) -> PeerError:
    """An answer other than 200, with the peer's reason when it gives one (it answers 503 while
    it still takes over this node's queue, and when that failed)."""
    try:
        body = await json_object(response, MAX_REFUSAL_BYTES, what)
    except PeerError:
        body = {}
    detail = body.get("detail")
    if not isinstance(detail, str) or not detail:
        return PeerError(Message("the peer answered HTTP {status}", status=response.status_code))
    why = Message(
        "the peer answered HTTP {status}: {detail}",
        status=response.status_code,
        detail=detail[:MAX_DETAIL_CHARS],
    )
    return PeerStillImporting(why) if body.get("error") == "importing" else PeerError(why)


async def _peer_imports_once_written(settings: Settings) -> set[str]:
    """The peer's imports, waiting while it still writes them (a node that boots while its
    peer imports a big replica); the queue here is held meanwhile."""
    deadline = time.monotonic() + ASK_WAIT_SECONDS
    waited = False
    while True:
        try:
            return await peer_imports(settings)
        except PeerStillImporting as exc:
            if time.monotonic() > deadline:
                raise
            if not waited:
                log.info("reconcile: waiting for the peer: %s", exc)
            waited = True
        await asyncio.sleep(LEAVE_POLL_SECONDS)


async def hold_first(settings: Settings, agent: AgentClient) -> str:
    """Hold the whole queue and write down what was held, before anything that needs the
    database or the peer: a node that boots while its PostgreSQL is down, or is stopped in the
    middle of its reconcile, keeps the mail the peer may have taken over on hold (the alert
    and the dashboard then count it) instead of delivering it a second time. Why it could not
    hold, or "" when it held."""
    try:
        # hold_all names only what it held now; earlier steps' holds are in the files.
        fresh = await agent.hold_all()
    except (AgentUnavailable, AgentRefused) as exc:
        return Message("cannot hold the queue: {error}", error=message_of(exc))
    _remember(pending_file(settings), fresh)
    return ""


async def run_once(settings: Settings, agent: AgentClient) -> ReconcileResult:
    started = time.monotonic()
    why = await hold_first(settings, agent)
    if why:
        return ReconcileResult("held", detail=why)
    held = sorted(set(pending(settings)) | set(_ids(leaving_file(settings))))
    if not held:
        log.info("reconcile: the queue is empty, nothing to reconcile")
        return ReconcileResult("nothing")
    try:
        imported = await _peer_imports_once_written(settings)
    except (PeerError, ValueError) as exc:
        _remember(pending_file(settings), held)
        _forget(leaving_file(settings), held)
        await audit.record(
            "reconcile",
            "queue.reconcile",
            f"{len(held)} held",
            "",
            "failed",
            after={"error": str(exc)},
        )
        log.warning(
            "reconcile: %d messages stay on hold, the peer cannot be asked: %s", len(held), exc
        )
        return ReconcileResult("held", held=len(held), detail=message_of(exc))
    delete = [i for i in held if i in imported]
    release = [i for i in held if i not in imported]
    await agent.delete_ids(delete)
    await _release(agent, release)
    _forget(pending_file(settings), held)
    _forget(leaving_file(settings), held)
    await audit.record(
        "reconcile",
        "queue.reconcile",
        f"{len(held)} held",
        "",
        after={"deleted": len(delete), "released": len(release)},
    )
    log.info(
        "reconcile: %d held, %d taken over by the peer and deleted, %d released, %.2f s",
        len(held),
        len(delete),
        len(release),
        time.monotonic() - started,
    )
    return ReconcileResult("reconciled", len(held), len(delete), len(release))


async def _release(agent: AgentClient, ids: list[str]) -> None:
    await agent.release_ids(ids)
    await agent.flush_all()


async def _release_held_on_leaving(settings: Settings, agent: AgentClient, held: list[str]) -> None:
    """The peer took nothing over: what hold_on_leaving held is this node's to deliver."""
    if held:
        await _release(agent, held)
        _forget(leaving_file(settings), held)


def keep_held_for_release(settings: Settings) -> None:
    """What leaving MASTER held, when its reconcile could not finish: held for the operator's
    release, where the alert and the dashboard count it."""
    held = _ids(leaving_file(settings))
    _remember(pending_file(settings), held)
    _forget(leaving_file(settings), held)


async def hold_on_leaving(settings: Settings, agent: AgentClient) -> list[str]:
    """keepalived took the VIP from this node: hold the whole queue now, before the peer
    imports this node's replica, so that Postfix here does not deliver what the peer will
    deliver too. The reconcile that follows (after_leaving_master) settles what was held."""
    try:
        if await locks.held(locks.SWITCHOVER):
            return []  # the switchover holds and reconciles this node's queue itself
    except locks.DATABASE_ERRORS as exc:  # no switchover runs without the database
        log.warning("reconcile: cannot ask the database whether a switchover runs: %s", exc)
    try:
        held = await agent.hold_all()
    except (AgentUnavailable, AgentRefused) as exc:
        log.warning("reconcile: cannot hold the queue on leaving MASTER: %s", exc)
        return []
    _remember(leaving_file(settings), held)
    log.info("reconcile: left MASTER, %d messages held until the peer is asked", len(held))
    return held


async def after_leaving_master(
    settings: Settings,
    agent: AgentClient,
    left_at: dt.datetime,
    held_on_leaving: list[str] | None = None,
) -> ReconcileResult:
    """keepalived took the VIP from this node (MASTER -> BACKUP, FAULT or STOP). The peer
    imports this node's replica when it becomes MASTER, so this node's queue is stale: once the
    peer is MASTER and has written what it took over (its status says its promotion
    finished), reconcile as a returning node does.

    Unless the peer was MASTER already while this node still was: that is a partition that
    healed, and then each node keeps and delivers what it accepted. Nothing is deleted from a
    live queue after a heal: a message may go out twice, none is lost. What hold_on_leaving
    held (held_on_leaving) is released then, and when the peer does not take over.
    """
    held = held_on_leaving or []
    if await locks.held(locks.SWITCHOVER):
        log.info("reconcile: a switchover is running; it reconciles this node's queue itself")
        return ReconcileResult("nothing", detail="a switchover reconciles")
    started = time.monotonic()
    while True:
        peer = await status.peer_status(settings)
        node = peer.get("status") or {}
        state = (node.get("vrrp") or {}).get("state")
        if state == "MASTER" and took_over(node):
            break
        limit = IMPORT_WAIT_SECONDS if state == "MASTER" else LEAVE_WAIT_SECONDS
        if time.monotonic() - started > limit:
            if peer["reachable"] and state != "MASTER":
                # The peer did not take over, so it imported nothing: this queue is the only
                # copy that may be delivered, and keepalived gives this node the VIP back.
                log.info("reconcile: the peer is %s, not MASTER: this queue stays as it is", state)
                await _release_held_on_leaving(settings, agent, held)
                return ReconcileResult("nothing", detail=f"the peer is {state}")
            # Cannot tell what the peer did: hold everything and raise the alert.
            return await run_once(settings, agent)
        await asyncio.sleep(LEAVE_POLL_SECONDS)
    since = dt.datetime.fromisoformat(node["vrrp"]["since"])
    if since < left_at - SPLIT_BRAIN_MARGIN:
        detail = (
            f"the peer was MASTER since {since.isoformat()}, before this node left MASTER at "
            f"{left_at.isoformat()}: a partition healed; every message stays and is delivered"
        )
        await audit.record(
            "reconcile", "queue.reconcile", "partition", "", after={"detail": detail}
        )
        log.warning("reconcile: %s", detail)
        await _release_held_on_leaving(settings, agent, held)
        return ReconcileResult("partition", detail=detail)
    return await run_once(settings, agent)


def took_over(node: dict[str, Any]) -> bool:
    """Whether a MASTER peer has written what it took over of this node's queue (or that its
    takeover failed, which the reconcile then reports)."""
    vrrp = node.get("vrrp") or {}
    if "promotion" in vrrp:
        return vrrp["promotion"] is not None
    # A peer from before promotions were written: its agent answers again once it has imported
    # (it runs one verb at a time), a moment before it writes what it imported.
    return (node.get("queue") or {}).get("messages") is not None


async def release_held(settings: Settings, agent: AgentClient, actor: str, source_ip: str) -> int:
    """The operator's decision when the peer cannot be asked: deliver what was held."""
    held = pending(settings)
    await _release(agent, held)
    _forget(pending_file(settings), held)
    await audit.record(actor, "queue.release_held", f"{len(held)} messages", source_ip)
    return len(held)
