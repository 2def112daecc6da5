"""Cluster locks: leases in PostgreSQL with a fencing token, and this node's own file locks.

A lease is granted when the lock is free, expired, or already held by the same holder (renewal).
Every grant increments the fencing token, so a holder that lost its lease while paused can be told
apart from the current one by anyone who checks the token.

A file lock (flock) excludes processes of this node only, but needs no database: a job that must
go on while PostgreSQL is down takes it first. The kernel drops it when its holder exits, however
that happens, so a killed run never blocks the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from app.db.tables import ClusterLock
from app.messages import Message

# What an unreachable or failing database raises: connection refused or reset, a server that
# is starting or shutting down, a connection that closed mid-query, a timeout.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
# The pauses of a writer that waits for a database that is down, the last one repeated: what it
# holds exists only in its process until written (a VRRP event, a promotion's queue IDs).
DATABASE_RETRY_SECONDS = (0.5, 1, 2, 5, 10, 30)


async def pause_for_database(
    log: logging.Logger,
    attempt: int,
    what: str,
    error: BaseException,
    pauses: tuple[float, ...] = DATABASE_RETRY_SECONDS,
) -> None:
    """Before a writer's try number attempt + 1: say what waits for the database, and wait."""
    delay = pauses[min(attempt, len(pauses) - 1)]
    log.warning("%s yet (%s); retrying in %s s", what, error, delay)
    await asyncio.sleep(delay)


# The queue-sync job's lock: one copy of the queue into the peer's replica at a time.
QUEUE_SYNC = "queue-sync"
# The planned switchover's lock: while it is held, the switchover reconciles this node's queue
# itself, and keepalived's events must not do it a second time.
SWITCHOVER = "switchover"
# What a cluster token may take over the API: the queue-sync lease, for a short while. The
# switchover lock stays local (taken over the API it would stop this node's reconcile), and a
# longer lease would let one token block replication for longer than a sync needs to renew.
API_LOCKS = frozenset({QUEUE_SYNC})
API_MAX_TTL_SECONDS = 60


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    fencing_token: int
    expires_at: dt.datetime


class LockConflict(Exception):
    def __init__(self, current: Lease) -> None:
        super().__init__(
            Message(
                "lock {name} is held by {holder} until {until}",
                name=current.name,
                holder=current.holder,
                until=current.expires_at.isoformat(),
            )
        )
        self.current = current


def _lease(row: dict) -> Lease:
    return Lease(row["name"], row["holder"], row["fencing_token"], row["expires_at"])


async def acquire(name: str, holder: str, ttl_seconds: float) -> Lease:
    rows = await ClusterLock.raw(
        "INSERT INTO cluster_locks (name, holder, fencing_token, expires_at) "
        "VALUES ({}, {}, 1, now() + make_interval(secs => {})) "
        "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, "
        "fencing_token = cluster_locks.fencing_token + 1, expires_at = EXCLUDED.expires_at "
        "WHERE cluster_locks.expires_at < now() OR cluster_locks.holder = EXCLUDED.holder "
        "RETURNING name, holder, fencing_token, expires_at",
        name,
        holder,
        float(ttl_seconds),
    )
    if rows:
        return _lease(rows[0])
    current = await ClusterLock.select().where(ClusterLock.name == name).first()
    if current is None:  # released between our insert and our read: try once more
        return await acquire(name, holder, ttl_seconds)
    raise LockConflict(_lease(current))


async def release(name: str, holder: str, fencing_token: int) -> bool:
    """Release only our own, current lease; False when it was not ours any more."""
    rows = await ClusterLock.raw(
        "UPDATE cluster_locks SET expires_at = now() "
        "WHERE name = {} AND holder = {} AND fencing_token = {} AND expires_at > now() "
        "RETURNING name",
        name,
        holder,
        fencing_token,
    )
    return bool(rows)


async def held(name: str) -> bool:
    """Whether someone holds an unexpired lease on `name` right now."""
    return bool(
        await ClusterLock.raw(
            "SELECT 1 FROM cluster_locks WHERE name = {} AND expires_at > now()", name
        )
    )


class LocalLockBusy(Exception):
    """Another process of this node holds the file lock."""


@contextlib.contextmanager
def local(path: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created mode 0600) for the block. Without `wait`, a
    lock held elsewhere raises LocalLockBusy naming the holder's pid; with it, the caller waits,
    which suits only short blocks that never await (asyncio tasks would block each other)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise LocalLockBusy(
                Message(
                    "{path} is locked by process {holder} on this node",
                    path=str(path),
                    holder=holder,
                )
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
