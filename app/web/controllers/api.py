"""The API: the config export the slave pulls, the slave's report of what it applied, and the
queue-sync lock (token auth only)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, get, post
from litestar.exceptions import ClientException
from litestar.params import FromQuery, JSONBody
from litestar.response import Response
from litestar.status_codes import (
    HTTP_204_NO_CONTENT,
    HTTP_409_CONFLICT,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from app.auth.tokens import TokenPrincipal
from app.cluster import locks, status
from app.config import applied, export

Req = Request[TokenPrincipal, Any, Any]


# A long poll longer than this would hold a connection past most proxies' idle timeouts.
MAX_EXPORT_WAIT_SECONDS = 60.0
# Every API request body is a small JSON object (well under 1 KiB); anything far larger is
# refused with 413 before it is read into memory or parsed.
MAX_BODY_BYTES = 16 * 1024


@dataclass
class NodeApplied:
    """What a slave runs: `master_number` is the master's version it applied (as local version
    `number`, which only means something on the slave), at `applied_at` (ISO 8601)."""

    node_id: Any
    number: Any
    master_number: Any
    applied_at: Any


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2**31 - 1:
        raise ClientException(f"{what} must be a non-negative integer")
    return value


def _node_report(data: NodeApplied, own_node_id: str) -> tuple[str, int, dt.datetime]:
    node_id = data.node_id
    if not applied.is_node_id(node_id):
        raise ClientException("node_id must be 1-32 letters or digits")
    if node_id == own_node_id:
        raise ClientException(f"node_id {node_id!r} is this node (the master) itself")
    _count(data.number, "number")
    master_number = _count(data.master_number, "master_number")
    try:
        applied_at = dt.datetime.fromisoformat(data.applied_at)
    except (TypeError, ValueError):
        raise ClientException("applied_at must be an ISO 8601 date and time") from None
    if applied_at.tzinfo is None:
        raise ClientException("applied_at must carry a time zone")
    return node_id, master_number, applied_at


@dataclass
class AcquireLock:
    holder: str
    ttl_seconds: float = 30.0
    name: str = locks.QUEUE_SYNC


@dataclass
class ReleaseLock:
    holder: str
    fencing_token: int
    name: str = locks.QUEUE_SYNC


def _check_lock_args(name: str, holder: str) -> None:
    if name not in locks.API_LOCKS:
        raise ClientException(
            f"name must be {' or '.join(sorted(locks.API_LOCKS))}: no other lock is taken "
            "over the API"
        )
    if not holder or len(holder) > 64 or not all(c.isalnum() or c in "-_." for c in holder):
        raise ClientException("holder must be 1-64 letters, digits, '-', '_' or '.'")


class ClusterApi(Controller):
    """What the nodes ask each other: the config export, applied versions, the sync lock and
    the imported queue IDs."""

    @get("/api/config/export", opt={"api": "read"})
    async def config_export(
        self, request: Req, newer_than: FromQuery[int | None] = None, wait: FromQuery[float] = 0.0
    ) -> dict[str, Any]:
        """The config version this node's Postfix runs (the last one applied successfully here:
        never a draft), with when it was applied. Secrets are sealed for the peer with a cluster
        token, else omitted. With `newer_than` and `wait` (seconds) the answer waits until this
        node runs a version newer than `newer_than` or `wait` runs out (a long poll: the slave's
        pull gets an Apply the moment it succeeded), then returns the applied version either way."""
        node_id = request.app.state.settings.node_id
        if newer_than is not None and wait > 0:
            if newer_than < 0 or not wait <= MAX_EXPORT_WAIT_SECONDS:
                raise ClientException(
                    f"newer_than must be >= 0 and wait at most {MAX_EXPORT_WAIT_SECONDS:g} seconds"
                )
            await applied.wait_for_newer(node_id, newer_than, wait)
        version, applied_at = await applied.version_run_by(node_id)
        return export.build(
            node_id, version, applied_at, request.app.state.box, request.user.kind == "cluster"
        )

    @post(
        "/api/nodes/applied",
        opt={"api": "cluster"},
        status_code=HTTP_204_NO_CONTENT,
        request_max_body_size=MAX_BODY_BYTES,
    )
    async def node_applied(self, request: Req, data: JSONBody[NodeApplied]) -> None:
        """A slave reports which of the master's versions its Postfix runs: stored in this (the
        master's) applied_versions under the master's numbering, so the dashboard shows both
        nodes. When it reported is stored beside it (reported_at), for "not reporting"."""
        settings = request.app.state.settings
        if settings.cluster_mode != "master":
            raise ClientException(
                "this node is not the master; report to the master", status_code=HTTP_409_CONFLICT
            )
        node_id, master_number, applied_at = _node_report(data, settings.node_id)
        await applied.record_heard(node_id, master_number, applied_at)

    @post(
        "/api/sync-lock/acquire",
        opt={"api": "cluster"},
        status_code=200,
        request_max_body_size=MAX_BODY_BYTES,
    )
    async def acquire_lock(self, data: JSONBody[AcquireLock]) -> Response[dict[str, Any]]:
        _check_lock_args(data.name, data.holder)
        if not 1 <= data.ttl_seconds <= locks.API_MAX_TTL_SECONDS:
            raise ClientException(f"ttl_seconds must be between 1 and {locks.API_MAX_TTL_SECONDS}")
        try:
            lease = await locks.acquire(data.name, data.holder, data.ttl_seconds)
        except locks.LockConflict as exc:
            return Response(
                {
                    "error": "conflict",
                    "detail": str(exc),
                    "holder": exc.current.holder,
                    "expires_at": exc.current.expires_at.isoformat(),
                },
                status_code=HTTP_409_CONFLICT,
            )
        return Response(
            {
                "name": lease.name,
                "holder": lease.holder,
                "fencing_token": lease.fencing_token,
                "expires_at": lease.expires_at.isoformat(),
            }
        )

    @post(
        "/api/sync-lock/release",
        opt={"api": "cluster"},
        status_code=200,
        request_max_body_size=MAX_BODY_BYTES,
    )
    async def release_lock(self, data: JSONBody[ReleaseLock]) -> Response[dict[str, Any]]:
        _check_lock_args(data.name, data.holder)
        if await locks.release(data.name, data.holder, data.fencing_token):
            return Response({"released": True})
        return Response(
            {"error": "conflict", "detail": "not the current holder of this lease"},
            status_code=HTTP_409_CONFLICT,
        )

    @get("/api/queue/imported", opt={"api": "cluster"})
    async def queue_imported(self, request: Req) -> Response[dict[str, Any]]:
        """The peer's original queue IDs this node took over when it became MASTER: a returning
        peer deletes exactly these from its stale queue. While this MASTER's takeover is not
        written yet the list would be short, and what it misses would go out twice: 503."""
        from app.db.tables import QueueImport

        vrrp = await status.vrrp_state(request.app.state.settings.node_id)
        if vrrp["state"] == "MASTER":
            done = vrrp["promotion"]
            if done is None:
                detail = "this node is still taking over the peer's queue; ask again"
                return Response(
                    {"error": "importing", "detail": detail},
                    status_code=HTTP_503_SERVICE_UNAVAILABLE,
                )
            if done["error"]:
                detail = f"this node's takeover of the peer's queue failed: {done['error']}"
                return Response(
                    {"error": "import failed", "detail": detail},
                    status_code=HTTP_503_SERVICE_UNAVAILABLE,
                )
        rows = await QueueImport.select(QueueImport.original_queue_id)
        return Response({"queue_ids": sorted({row["original_queue_id"] for row in rows})})
