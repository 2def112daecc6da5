"""The queue-sync job (`mailrelay queue-sync`, every SYNC_INTERVAL_SECONDS): while this node
holds the VIP, copy its Postfix queue into the peer's replica directory.

One run: check the VIP (on every run: keepalived may have moved it since the last one), take
this node's file lock (a second run on this node aborts and is recorded), take the `queue-sync`
lease in cluster_locks, ask the agent to freeze, copy and thaw, record the run in sync_runs,
release the lease. A node without the VIP does nothing and records nothing (a passive node would
otherwise write a row every five seconds).

A PostgreSQL outage on this node does not stop replication: the file lock alone keeps runs
apart, the run goes on without the lease, and its sync_runs row waits in a spool file under
STATE_DIR until a run reaches the database again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.agent.protocol import SyncAnswer
from app.cluster import locks
from app.cluster.vip import VipCheckError, vip_held
from app.db.tables import SyncRun
from app.messages import Message, message_of
from app.settings import FreezeMode, Settings

log = logging.getLogger("mailrelay.queue_sync")
LOCK = locks.QUEUE_SYNC
# Longer than a run can take: two passes of at most 240 s and a frozen one of at most 15 s
# (app/agent/queuesync.py).
LEASE_SECONDS = 600


@dataclass
class SyncResult:
    outcome: str  # ok | skipped | conflict | failed
    detail: str = ""


def lock_file(settings: Settings) -> Path:
    """This node's queue-sync lock (held for the whole run)."""
    return settings.state_dir / "queue-sync.lock"


def spool_file(settings: Settings) -> Path:
    """sync_runs rows of runs that could not reach the database, one JSON object a line."""
    return settings.state_dir / "sync-runs.spool"


class _Database:
    """Whether this run can use PostgreSQL; the first failure turns it off for the rest of
    the run, so that a database that dies mid-run costs one timeout, not one per step."""

    def __init__(self, up: bool, error: str = "") -> None:
        self.up, self.error = up, error

    def lost(self, exc: BaseException) -> None:
        self.up, self.error = False, str(exc) or type(exc).__name__


async def _open(connect: Callable[[], Awaitable[None]] | None) -> _Database:
    if connect is None:  # the caller's pool is open (the web app's switchover, the tests)
        return _Database(True)
    try:
        await connect()
    except locks.DATABASE_ERRORS as exc:
        return _Database(False, str(exc) or type(exc).__name__)
    return _Database(True)


async def run_once(
    settings: Settings,
    agent: AgentClient,
    freeze: FreezeMode,
    connect: Callable[[], Awaitable[None]] | None = None,
) -> SyncResult:
    """One run. `connect` opens the database for it, after the VIP check (a passive node never
    touches the database); a run that cannot open it copies all the same."""
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)
    if not settings.vip_address:
        return SyncResult("skipped", "no VIP_ADDRESS configured")
    vip_error: str = ""
    try:
        if not vip_held(settings.vip_address):
            log.debug("queue-sync: not the VIP owner, nothing to do")
            if spool_file(settings).exists():  # runs from while it was active, still owed
                database = await _open(connect)
                if database.up:
                    await _flush_spool(settings, database)
            return SyncResult("skipped", "this node does not hold the VIP")
    except VipCheckError as exc:
        vip_error = Message("VIP check: {error}", error=message_of(exc))
    database = await _open(connect)
    run = _Run(settings, freeze, started_at, started, database)
    if vip_error:
        return await run.record("failed", vip_error)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locks.local(lock_file(settings)))
        except locks.LocalLockBusy as exc:
            return await run.record("conflict", message_of(exc))
        except OSError as exc:
            why = Message("cannot take this node's queue-sync lock: {error}", error=str(exc))
            return await run.record("failed", why)
        return await _sync(settings, agent, freeze, run)


async def _sync(
    settings: Settings, agent: AgentClient, freeze: FreezeMode, run: _Run
) -> SyncResult:
    lease: locks.Lease | None = None
    # One holder per run (this process), so that a second run at the same time (a manual one,
    # a switchover's final sync) conflicts instead of renewing the first one's lease.
    holder = f"{settings.node_id}-queue-sync-{os.getpid()}"
    if run.database.up:
        try:
            lease = await _lease(settings.node_id, holder)
        except locks.LockConflict as exc:
            return await run.record("conflict", message_of(exc))
        except locks.DATABASE_ERRORS as exc:
            run.database.lost(exc)
    try:
        report = await agent.queue_sync(freeze)
    except (AgentUnavailable, AgentRefused) as exc:
        report = SyncAnswer(
            mode=freeze,
            ok=False,
            error=message_of(exc),
            duration=0.0,
            freeze_seconds=0.0,
            files=0,
            bytes=0,
            passes=[],
        )
    finally:
        if lease is not None and run.database.up:
            try:
                await locks.release(LOCK, holder, lease.fencing_token)
            except locks.DATABASE_ERRORS as exc:
                run.database.lost(exc)  # the lease expires by itself
    if report["ok"] and settings.sync_flush:
        await _flush(agent)
    return await run.record(
        "ok" if report["ok"] else "failed",
        report.get("error", ""),
        token=None if lease is None else lease.fencing_token,
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
        await agent.flush_all()
    except (AgentUnavailable, AgentRefused) as exc:
        log.warning("queue-sync: postqueue -f after the sync failed: %s", exc)


@dataclass
class _Row:
    """A sync_runs row as the spool file keeps it."""

    started_at: str
    node_id: str
    peer: str
    outcome: str
    detail: str
    duration_seconds: float
    freeze_seconds: float
    freeze_mode: str
    files: int
    bytes: int
    fencing_token: int | None

    def fields(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": dt.datetime.fromisoformat(self.started_at)}


@dataclass
class _Run:
    settings: Settings
    freeze: str
    started_at: dt.datetime
    started: float
    database: _Database

    async def record(
        self,
        outcome: str,
        detail: str,
        token: int | None = None,
        frozen: float = 0.0,
        files: int = 0,
        size: int = 0,
    ) -> SyncResult:
        settings = self.settings
        duration = time.monotonic() - self.started
        row = _Row(
            self.started_at.isoformat(),
            settings.node_id,
            settings.peer_node_ip or "",
            outcome,
            detail[:2000],
            duration,
            frozen,
            self.freeze,
            files,
            size,
            token,
        )
        if self.database.up:
            await _flush_spool(settings, self.database)
        if self.database.up:
            try:
                await SyncRun.insert(SyncRun(**row.fields()))
            except locks.DATABASE_ERRORS as exc:
                self.database.lost(exc)
        if not self.database.up:
            try:
                _spool(settings, row)
            except OSError as exc:
                log.error("queue-sync: cannot keep this run's record in the spool: %s", exc)
            log.warning(
                "queue-sync: the database is down (%s); the sync went on without it, and this "
                "run (%s) waits in %s until a run reaches the database",
                self.database.error,
                outcome,
                spool_file(settings),
            )
        line = (
            f"queue-sync: {outcome} to {settings.peer_node_ip}: {files} files, {size} bytes, "
            f"frozen {frozen * 1000:.0f} ms ({self.freeze}), {duration:.2f} s"
        )
        if outcome == "ok":
            log.info(line)
        else:
            log.warning("%s: %s", line, detail)
        return SyncResult(outcome, detail)


# The spool's conditional insert: the row, unless one of the same node and start is there.
_INSERT_SPOOLED = (
    "INSERT INTO sync_runs (started_at, node_id, peer, outcome, detail, duration_seconds, "
    "freeze_seconds, freeze_mode, files, bytes, fencing_token) "
    "SELECT {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {} WHERE NOT EXISTS "
    "(SELECT 1 FROM sync_runs WHERE node_id = {} AND started_at = {})"
)


def _spool_lock(settings: Settings) -> contextlib.AbstractContextManager[None]:
    return locks.local(settings.state_dir / "sync-runs.spool.lock", wait=True)


def _spool(settings: Settings, row: _Row) -> None:
    with _spool_lock(settings), spool_file(settings).open("a") as spool:
        spool.write(json.dumps(asdict(row)) + "\n")
        spool.flush()
        os.fsync(spool.fileno())


def _read_spool(settings: Settings) -> list[_Row]:
    """The spooled rows (the caller holds the spool lock)."""
    try:
        lines = spool_file(settings).read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(_Row(**json.loads(line)))
        except (ValueError, TypeError) as exc:  # a line cut short by a crash: nothing to keep
            log.warning("queue-sync: dropping an unreadable line of the spool: %s", exc)
    return rows


def _spooled(settings: Settings) -> list[_Row]:
    with _spool_lock(settings):
        return _read_spool(settings)


def _unspool(settings: Settings, recorded: list[_Row]) -> None:
    """Drop the recorded rows from the spool, keeping any a run added meanwhile."""
    done = {(row.node_id, row.started_at) for row in recorded}
    path = spool_file(settings)
    with _spool_lock(settings):
        keep = [row for row in _read_spool(settings) if (row.node_id, row.started_at) not in done]
        if not keep:
            path.unlink(missing_ok=True)
            return
        temporary = path.with_name(path.name + ".new")
        temporary.write_text("".join(json.dumps(asdict(row)) + "\n" for row in keep))
        os.replace(temporary, path)


async def _flush_spool(settings: Settings, database: _Database) -> None:
    """Write the spooled rows to sync_runs, each exactly once: two runs may flush the same
    rows at once, and a run may die between its commit and its cleanup of the spool. So the
    rows go in under a transaction-scoped advisory lock, each only if no row of the same node
    and start time exists yet (a run's start, to the microsecond, names it)."""
    rows = _spooled(settings)
    if not rows:
        return
    try:
        async with SyncRun._meta.db.transaction():
            await SyncRun.raw("SELECT pg_advisory_xact_lock(hashtext('mailrelay sync_runs spool'))")
            for row in rows:
                fields = row.fields()
                await SyncRun.raw(
                    _INSERT_SPOOLED, *fields.values(), fields["node_id"], fields["started_at"]
                )
    except locks.DATABASE_ERRORS as exc:
        database.lost(exc)
        return
    _unspool(settings, rows)
    log.info("queue-sync: recorded %d runs from while the database was down", len(rows))
