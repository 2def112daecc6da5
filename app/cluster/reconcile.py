"""Return: a node that boots (or drops from MASTER to BACKUP) holds a stale queue. Before its
Postfix delivers anything it puts its whole queue on hold, asks the peer which of its queue IDs
the peer took over (queue_imports), deletes exactly those, and releases the rest: mail it
accepted after its last sync is delivered late, not lost, and nothing is delivered twice. If
the peer cannot be asked, everything stays held and the dashboard says so; releasing it is one
audited click (or `mailrelay reconcile --release`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import audit
from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.cluster.peer import PeerApi, PeerError, peer_request
from app.settings import Settings

log = logging.getLogger("mailrelay.reconcile")


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


async def peer_imports(settings: Settings) -> set[str]:
    peer = PeerApi.from_settings(settings)
    async with peer_request(
        peer.url, peer.token, peer.tls, "GET", "/api/queue/imported"
    ) as response:
        if response.status_code != 200:
            raise PeerError(f"the peer answered HTTP {response.status_code}")
        body: dict[str, Any] = json.loads(await response.aread())
    return {str(i) for i in body.get("queue_ids", [])}


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


async def release_held(settings: Settings, agent: AgentClient, actor: str, source_ip: str) -> int:
    """The operator's decision when the peer cannot be asked: deliver what was held."""
    held = pending(settings)
    await agent.call("release_ids", queue_ids=held)
    await agent.call("flush_all")
    pending_file(settings).unlink(missing_ok=True)
    await audit.record(actor, "queue.release_held", f"{len(held)} messages", source_ip)
    return len(held)
