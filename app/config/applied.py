"""Which config version each node's Postfix runs, and since when: the one owner of
applied_versions.

A node's own row holds its local version number, written after its agent applied that version.
The other node's row holds what that node runs in the master's numbering, as last heard: on the
master, what a slave reports after each pull; on a slave, what the master's export says the
master runs. `heard_at` (the column reported_at) is when that was last heard; None on own rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from app.db.tables import AppliedVersion, ConfigVersion

_UPSERT = (
    "INSERT INTO applied_versions (node_id, number, applied_at, reported_at) "
    "VALUES ({}, {}, {}, {}) "
    "ON CONFLICT (node_id) DO UPDATE SET number = EXCLUDED.number, "
    "applied_at = EXCLUDED.applied_at, reported_at = EXCLUDED.reported_at"
)


def is_node_id(value: object) -> bool:
    """A node id as NODE_ID allows it: 1-32 ASCII letters or digits (a table key, and shown)."""
    return isinstance(value, str) and 1 <= len(value) <= 32 and value.isascii() and value.isalnum()


async def record_own(node_id: str, number: int) -> None:
    """This node's Postfix runs local version `number` from now on (call inside the apply's
    transaction, beside its audit entry)."""
    await AppliedVersion.raw(_UPSERT, node_id, number, dt.datetime.now(dt.UTC), None)


async def record_heard(node_id: str, master_number: int, applied_at: dt.datetime) -> None:
    """The other node runs master version `master_number`, applied at `applied_at` (its clock,
    capped at ours: a clock ahead must not make an apply look like it is yet to come)."""
    now = dt.datetime.now(dt.UTC)
    await AppliedVersion.raw(_UPSERT, node_id, master_number, min(applied_at, now), now)


async def of(node_id: str) -> dict[str, Any] | None:
    """The row of one node: number, applied_at, reported_at; None when it has none."""
    return await AppliedVersion.select().where(AppliedVersion.node_id == node_id).first()


async def every() -> dict[str, dict[str, Any]]:
    """Every node's row, by node id."""
    return {row["node_id"]: row for row in await AppliedVersion.select()}


async def number_of(node_id: str) -> int:
    """The local version this node runs; 0 when nothing was applied here yet."""
    row = await of(node_id)
    return row["number"] if row else 0


async def version_run_by(node_id: str) -> tuple[dict[str, Any] | None, dt.datetime | None]:
    """The whole config version this node's Postfix runs (with its snapshot) and when it was
    applied; (None, None) before the first apply."""
    row = await of(node_id)
    if row is None:
        return None, None
    version = (
        await ConfigVersion.select()
        .where(ConfigVersion.number == row["number"])
        .output(load_json=True)
        .first()
    )
    return version, row["applied_at"]


async def wait_for_newer(node_id: str, number: int, seconds: float, poll: float = 0.25) -> None:
    """Return once this node runs a version newer than `number`, or after `seconds`. The
    master's export waits here (a long poll), so that an Apply reaches the slave the moment it
    succeeded. Reading one primary-key row four times a second is cheap, and unlike LISTEN it
    needs no connection held for the wait."""
    deadline = time.monotonic() + seconds
    while await number_of(node_id) <= number:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(poll, left))
