"""Return: a node that boots (or leaves MASTER) holds a stale queue. Before its
Postfix delivers anything it puts its whole queue on hold, asks the peer which of its queue IDs
the peer took over (queue_imports), deletes exactly those, and releases the rest: mail it
accepted after its last sync is delivered late, not lost, and nothing is delivered twice. If
the peer cannot be asked, everything stays held and the dashboard says so; releasing it is one
audited click (or `mailrelay reconcile --release`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from app import audit
from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.cluster import locks, status
from app.cluster.peer import PeerApi, PeerError, json_object, peer_request
from app.settings import Settings

log = logging.getLogger("mailrelay.reconcile")
# How long a node that left MASTER waits for the peer to become MASTER, and then for a MASTER
# peer to finish importing its replica (87 s for 100,000 messages in the lab: scripts/bench
# sync). Until then the peer's list of what it took over is short.
LEAVE_WAIT_SECONDS = 60.0
IMPORT_WAIT_SECONDS = 900.0
LEAVE_POLL_SECONDS = 1.0
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


def pending(settings: Settings) -> list[str]:
    try:
        return list(json.loads(pending_file(settings).read_text()))
    except (OSError, ValueError):
        return []


# A queue ID and its quotes take about 20 bytes: room for a queue of several hundred thousand.
MAX_IMPORTED_BYTES = 16 * 1024 * 1024


async def peer_imports(settings: Settings) -> set[str]:
    peer = PeerApi.from_settings(settings)
    async with peer_request(
        peer.url, peer.token, peer.tls, "GET", "/api/queue/imported"
    ) as response:
        if response.status_code != 200:
            raise PeerError(f"the peer answered HTTP {response.status_code}")
        body = await json_object(response, MAX_IMPORTED_BYTES, "the peer's list of imports")
    ids = body.get("queue_ids", [])
    if not isinstance(ids, list):
        raise PeerError("the peer's list of imports has no queue_ids list")
    return {str(i) for i in ids}


async def run_once(settings: Settings, agent: AgentClient) -> ReconcileResult:
    started = time.monotonic()
    try:
        held: list[str] = sorted(set(await agent.call("hold_all")) | set(pending(settings)))
    except (AgentUnavailable, AgentRefused) as exc:
        return ReconcileResult("held", detail=f"cannot hold the queue: {exc}")
    if not held:
        pending_file(settings).unlink(missing_ok=True)
        log.info("reconcile: the queue is empty, nothing to reconcile")
        return ReconcileResult("nothing")
    try:
        imported = await peer_imports(settings)
    except (PeerError, ValueError) as exc:
        pending_file(settings).write_text(json.dumps(held))
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
        return ReconcileResult("held", held=len(held), detail=str(exc))
    delete = [i for i in held if i in imported]
    release = [i for i in held if i not in imported]
    await agent.call("delete_ids", queue_ids=delete)
    await agent.call("release_ids", queue_ids=release)
    await agent.call("flush_all")
    pending_file(settings).unlink(missing_ok=True)
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


async def after_leaving_master(
    settings: Settings, agent: AgentClient, left_at: dt.datetime
) -> ReconcileResult:
    """keepalived took the VIP from this node (MASTER -> BACKUP, FAULT or STOP). The peer
    imports this node's replica when it becomes MASTER, so this node's queue is stale: once the
    peer is MASTER and has imported (its agent answers again: it runs one verb at a time),
    reconcile as a returning node does.

    Unless the peer was MASTER already while this node still was: that is a partition that
    healed, and then each node keeps and delivers what it accepted. Nothing is deleted from a
    live queue after a heal: a message may go out twice, none is lost.
    """
    if await locks.held(locks.SWITCHOVER):
        log.info("reconcile: a switchover is running; it reconciles this node's queue itself")
        return ReconcileResult("nothing", detail="a switchover reconciles")
    started = time.monotonic()
    while True:
        peer = await status.peer_status(settings)
        node = peer.get("status") or {}
        state = (node.get("vrrp") or {}).get("state")
        if state == "MASTER" and (node.get("queue") or {}).get("messages") is not None:
            break
        # A MASTER peer whose agent does not answer yet is still importing.
        limit = IMPORT_WAIT_SECONDS if state == "MASTER" else LEAVE_WAIT_SECONDS
        if time.monotonic() - started > limit:
            if peer["reachable"] and state != "MASTER":
                # The peer did not take over, so it imported nothing: this queue is the only
                # copy that may be delivered, and keepalived gives this node the VIP back.
                log.info("reconcile: the peer is %s, not MASTER: this queue stays as it is", state)
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
        return ReconcileResult("partition", detail=detail)
    return await run_once(settings, agent)


async def release_held(settings: Settings, agent: AgentClient, actor: str, source_ip: str) -> int:
    """The operator's decision when the peer cannot be asked: deliver what was held."""
    held = pending(settings)
    await agent.call("release_ids", queue_ids=held)
    await agent.call("flush_all")
    pending_file(settings).unlink(missing_ok=True)
    await audit.record(actor, "queue.release_held", f"{len(held)} messages", source_ip)
    return len(held)
