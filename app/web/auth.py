"""Who is calling: a GUI session (cookie) or an API token (bearer), and what they may do.

One middleware identifies the caller; one guard, on every route, enforces the route's `opt`:
  opt={"public": True}           no login (login page, health check, static files)
  opt={"role": "operator"}       the least role a session user needs (default: readonly)
  opt={"api": "read"|"write"|"cluster"}  an API route: only tokens; "read" takes every kind,
                                 "write" and "cluster" only a token of that kind
  opt={"before_password_change": True}  reachable while a password change is pending
  opt={"master_only": True}      changes the configuration: refused on the slave
  opt={"second_factor": "verify"|"enrol"|"any"}  reachable by a session that passed the password
                                 but still lacks that second-factor step; others are not
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)

from app import audit
from app.auth import mfa, sessions, tokens
from app.auth.roles import Role
from app.auth.sessions import COOKIE_NAME, SessionUser
from app.auth.tokens import TokenPrincipal


def token_path(path: str) -> bool:
    """The API, and /metrics where Prometheus calls: bearer tokens, never a session."""
    return path.startswith("/api/") or path == "/metrics"


class PasswordChangeRequired(Exception):
    """The user logged in with a password that must be changed first."""


@dataclass(frozen=True)
class SessionAuth:
    """What the session cookie proved: its row, and the second-factor step it still lacks."""

    session_id: int
    second_factor: str | None


def source_ip(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else ""


class CallerMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        if token_path(connection.scope["path"]):
            header = connection.headers.get("authorization", "")
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value:
                raise NotAuthorizedException("An API token is required (Authorization: Bearer).")
            address = source_ip(connection)
            try:
                principal = await tokens.authenticate(value.strip(), address)
            except tokens.TokenRefused as exc:
                await audit.record(
                    tokens.actor_name(exc.name),
                    "api.auth",
                    connection.scope["path"],
                    address,
                    "denied",
                    after=str(exc),
                )
                if isinstance(exc, tokens.TokenSourceRefused):
                    raise PermissionDeniedException(str(exc)) from None
                raise NotAuthorizedException(str(exc)) from None
            if principal is None:
                await audit.record("-", "api.auth", connection.scope["path"], address, "failed")
                raise NotAuthorizedException("The API token is unknown or revoked.")
            return AuthenticationResult(user=principal, auth=principal)
        token = connection.cookies.get(COOKIE_NAME)
        settings = connection.app.state.settings
        loaded = (
            await sessions.load_session(
                token, settings.session_idle_minutes, settings.session_max_hours
            )
            if token
            else None
        )
        if loaded is None:
            raise NotAuthorizedException("Please log in.")
        user, stage = loaded
        return AuthenticationResult(user=user, auth=SessionAuth(user.session_id, stage))


async def access_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    opt = handler.opt
    if opt.get("public"):
        return
    caller = connection.user
    api_kind = opt.get("api")
    if isinstance(caller, TokenPrincipal):
        if api_kind is None or (api_kind != "read" and caller.kind != api_kind):
            await _deny(
                connection,
                caller.actor,
                f"This API token is of kind {caller.kind}: it does not allow this "
                f"({api_kind or 'no API'} access needed).",
            )
        await _refuse_on_slave(connection, handler, caller.actor)
        return
    if not isinstance(caller, SessionUser) or api_kind is not None:
        await _deny(connection, getattr(caller, "username", "-"))
        return
    auth = connection.scope.get("auth")
    stage = auth.second_factor if isinstance(auth, SessionAuth) else None
    if stage is not None and opt.get("second_factor") not in (stage, "any"):
        raise mfa.SecondFactorPending(stage)
    if caller.must_change_password and not opt.get("before_password_change"):
        raise PasswordChangeRequired
    if caller.role < Role.parse(opt.get("role", "readonly")):
        await _deny(connection, caller.username)
    await _refuse_on_slave(connection, handler, caller.username)


async def _refuse_on_slave(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler, who: str
) -> None:
    if handler.opt.get("master_only") and connection.app.state.settings.cluster_mode != "master":
        await _audit_refusal(connection, who, "config.refused-on-slave")
        raise PermissionDeniedException(
            "This node is a slave: change the configuration on the master."
        )


async def audit_csrf_refusal(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Audit a request the CSRF check refused (run after the answer is sent)."""
    caller = connection.scope.get("user")
    who = caller.username if isinstance(caller, SessionUser) else "-"
    await _audit_refusal(connection, who, "csrf.refused")


async def _deny(
    connection: ASGIConnection[Any, Any, Any, Any],
    who: str,
    detail: str = "Your role does not allow this.",
) -> None:
    await _audit_refusal(connection, who, "access.denied")
    raise PermissionDeniedException(detail)


async def _audit_refusal(
    connection: ASGIConnection[Any, Any, Any, Any], who: str, action: str
) -> None:
    await audit.record(
        who,
        action,
        f"{connection.scope.get('method', '')} {connection.scope['path']}",
        source_ip(connection),
        "denied",
    )
