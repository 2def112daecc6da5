"""The API: the config export the slave pulls and the queue-sync lock (token auth only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request, get, post
from litestar.exceptions import ClientException
from litestar.params import JSONBody
from litestar.response import Response
from litestar.status_codes import HTTP_409_CONFLICT

from app.auth.tokens import TokenPrincipal
from app.cluster import locks
from app.config import export, service

Req = Request[TokenPrincipal, Any, Any]


@get("/api/config/export", opt={"api": "read"})
async def config_export(request: Req) -> dict[str, Any]:
    """The latest config version. Secrets are sealed for the peer with a cluster token, else
    omitted."""
    return export.build(
        await service.latest_version(), request.app.state.box, request.user.kind == "cluster"
    )


@dataclass
class AcquireLock:
    holder: str
    ttl_seconds: float = 30.0
    name: str = "queue-sync"


@dataclass
class ReleaseLock:
    holder: str
    fencing_token: int
    name: str = "queue-sync"


def _check_lock_args(name: str, holder: str) -> None:
    for value, what in ((name, "name"), (holder, "holder")):
        if not value or len(value) > 64 or not all(c.isalnum() or c in "-_." for c in value):
            raise ClientException(f"{what} must be 1-64 letters, digits, '-', '_' or '.'")


@post("/api/sync-lock/acquire", opt={"api": "cluster"}, status_code=200)
async def acquire_lock(data: JSONBody[AcquireLock]) -> Response[dict[str, Any]]:
    _check_lock_args(data.name, data.holder)
    if not 1 <= data.ttl_seconds <= locks.MAX_TTL_SECONDS:
        raise ClientException(f"ttl_seconds must be between 1 and {locks.MAX_TTL_SECONDS}")
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


@post("/api/sync-lock/release", opt={"api": "cluster"}, status_code=200)
async def release_lock(data: JSONBody[ReleaseLock]) -> Response[dict[str, Any]]:
    _check_lock_args(data.name, data.holder)
    if await locks.release(data.name, data.holder, data.fencing_token):
        return Response({"released": True})
    return Response(
        {"error": "conflict", "detail": "not the current holder of this lease"},
        status_code=HTTP_409_CONFLICT,
    )
