"""Cluster locks: leases in PostgreSQL with a fencing token.

A lease is granted when the lock is free, expired, or already held by the same holder (renewal).
Every grant increments the fencing token, so a holder that lost its lease while paused can be told
apart from the current one by anyone who checks the token.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from app.db.tables import ClusterLock

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
            f"lock {current.name} is held by {current.holder} until "
            f"{current.expires_at.isoformat()}"
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
