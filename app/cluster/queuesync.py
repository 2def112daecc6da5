"""The queue-sync job (`mailrelay queue-sync`, every SYNC_INTERVAL_SECONDS): while this node
holds the VIP, copy its Postfix queue into the peer's replica directory.

One run: check the VIP (on every run: keepalived may have moved it since the last one), take
the `queue-sync` lease in cluster_locks (a second run on this node aborts and is recorded),
ask the agent to freeze, copy and thaw, record the run in sync_runs, release the lease. A node
without the VIP does nothing and records nothing (a passive node would otherwise write a row
every five seconds).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.cluster import locks
from app.cluster.vrrp import VipCheckError, vip_held
from app.db.tables import SyncRun
from app.settings import Settings

log = logging.getLogger("mailrelay.queue_sync")
LOCK = locks.QUEUE_SYNC
# Longer than a run can take: two passes of at most 240 s and a frozen one of at most 15 s
# (app/agent/queuesync.py).
LEASE_SECONDS = 600


@dataclass
class SyncResult:
    outcome: str  # ok | skipped | conflict | failed
    detail: str = ""


async def run_once(settings: Settings, agent: AgentClient, freeze: str) -> SyncResult:
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)
    if not settings.vip_address:
        return SyncResult("skipped", "no VIP_ADDRESS configured")
    try:
        if not vip_held(settings.vip_address):
            log.debug("queue-sync: not the VIP owner, nothing to do")
            return SyncResult("skipped", "this node does not hold the VIP")
    except VipCheckError as exc:
        return await _record(settings, started_at, started, "failed", f"VIP check: {exc}", freeze)
    # One holder per run (this process), so that a second run at the same time (a manual one,
    # a switchover's final sync) conflicts instead of renewing the first one's lease.
    holder = f"{settings.node_id}-queue-sync-{os.getpid()}"
    try:
        lease = await _lease(settings.node_id, holder)
    except locks.LockConflict as exc:
        return await _record(settings, started_at, started, "conflict", str(exc), freeze)
    try:
        report: dict[str, Any] = await agent.call("queue_sync", freeze=freeze)
    except (AgentUnavailable, AgentRefused) as exc:
        await locks.release(LOCK, holder, lease.fencing_token)
        return await _record(
            settings, started_at, started, "failed", str(exc), freeze, token=lease.fencing_token
        )
    await locks.release(LOCK, holder, lease.fencing_token)
    if report["ok"] and settings.sync_flush:
        await _flush(agent)
    return await _record(
        settings,
        started_at,
        started,
        "ok" if report["ok"] else "failed",
        report.get("error", ""),
        freeze,
        token=lease.fencing_token,
        frozen=report.get("freeze_seconds", 0.0),
        files=report.get("files", 0),
        size=report.get("bytes", 0),
    )


async def _lease(node_id: str, holder: str) -> locks.Lease:
    """The queue-sync lease. It outlives a hung run by a margin, so a stuck copy cannot be
    overlapped forever; but the lease of a run on this node whose process is gone (killed
    mid-copy) is taken over at once rather than blocking replication until it expires."""
    try:
        return await locks.acquire(LOCK, holder, ttl_seconds=LEASE_SECONDS)
    except locks.LockConflict as exc:
        current = exc.current
        if not _dead_run_here(current.holder, node_id):
            raise
        log.warning("queue-sync: taking over the lease of %s, which is gone", current.holder)
        await locks.release(LOCK, current.holder, current.fencing_token)
        return await locks.acquire(LOCK, holder, ttl_seconds=LEASE_SECONDS)


def _dead_run_here(holder: str, node_id: str) -> bool:
    prefix = f"{node_id}-queue-sync-"
    if not holder.startswith(prefix) or not holder[len(prefix) :].isdigit():
        return False
    try:
        os.kill(int(holder[len(prefix) :]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


async def _flush(agent: AgentClient) -> None:
    """SYNC_FLUSH: `postqueue -f` after the copy, as the seed did. A failed flush is logged;
    the sync itself succeeded and is recorded so."""
    try:
        await agent.call("flush_all")
    except (AgentUnavailable, AgentRefused) as exc:
        log.warning("queue-sync: postqueue -f after the sync failed: %s", exc)


async def _record(
    settings: Settings,
    started_at: dt.datetime,
    started: float,
    outcome: str,
    detail: str,
    freeze: str,
    token: int | None = None,
    frozen: float = 0.0,
    files: int = 0,
    size: int = 0,
) -> SyncResult:
    duration = time.monotonic() - started
    await SyncRun.insert(
        SyncRun(
            started_at=started_at,
            node_id=settings.node_id,
            peer=settings.peer_node_ip or "",
            outcome=outcome,
            detail=detail[:2000],
            duration_seconds=duration,
            freeze_seconds=frozen,
            freeze_mode=freeze,
            files=files,
            bytes=size,
            fencing_token=token,
        )
    )
    line = (
        f"queue-sync: {outcome} to {settings.peer_node_ip}: {files} files, {size} bytes, "
        f"frozen {frozen * 1000:.0f} ms ({freeze}), {duration:.2f} s"
    )
    if outcome == "ok":
        log.info(line)
    else:
        log.warning("%s: %s", line, detail)
    return SyncResult(outcome, detail)
