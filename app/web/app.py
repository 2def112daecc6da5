"""create_app(): every route, plugin, middleware and exception handler is wired here."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from litestar import Controller, Litestar, Request, Router
from litestar.background_tasks import BackgroundTask
from litestar.config.csrf import CSRFConfig
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.logging.config import LoggingConfig
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.htmx import HTMXPlugin
from litestar.response import Response
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.template.config import TemplateConfig

from app.agent.client import AgentClient
from app.auth.mfa import SecondFactorPending
from app.config.service import NotFound
from app.crypto import SecretBox, ensure_secret_key
from app.db import pool
from app.messages import Message
from app.piccolo_conf import DB
from app.settings import Settings
from app.web.auth import (
    CallerMiddleware,
    PasswordChangeRequired,
    access_guard,
    audit_csrf_refusal,
    token_path,
)
from app.web.controllers import (
    admin,
    api,
    automation,
    cluster,
    config,
    mfa,
    monitor,
    queue,
    routetools,
    session,
    tracking,
    versions,
)
from app.web.security import add_security_headers
from app.web.templating import template_engine
from app.web.views import done, error_page

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_PATHS = ["^/static/", "^/login", "^/healthz", "^/api/schema"]
# __Host-: only this host can set it (Secure, Path=/, no Domain), so a sibling subdomain cannot
# plant a token pair of its own choosing.
CSRF_COOKIE = "__Host-csrftoken"
# The GUI and the cluster API by area, one router each; an area's handlers are the methods of its
# screens' controllers (the automation API under /api/v1 is a router of its own).
AREAS: dict[str, list[type[Controller]]] = {
    "auth": [session.Session, mfa.Enrolment, mfa.Verification],
    "monitor": [monitor.Monitor],
    "config": [
        config.Domains,
        config.Routes,
        config.Networks,
        routetools.RouteTools,
        versions.Versions,
    ],
    "queue": [queue.Queue],
    "logs": [tracking.Logs],
    "admin": [admin.Users, admin.Tokens, admin.Audit],
    "cluster": [cluster.Cluster, cluster.NodeStatus],
    "api": [api.ClusterApi],
}
# The detail of the PermissionDeniedException that Litestar's CSRF middleware raises.
CSRF_REFUSED = "CSRF token verification failed"


def _wants_json(request: Request[Any, Any, Any]) -> bool:
    return token_path(request.url.path)


def _not_logged_in(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if _wants_json(request):
        return Response({"status_code": 401, "detail": str(exc)}, status_code=401)
    target = request.url.path
    return done(request, "/login" if target == "/" else f"/login?next={target}")


def _forbidden(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    detail = getattr(exc, "detail", "") or "Forbidden"
    response: Response[Any]
    if _wants_json(request):
        response = Response({"status_code": 403, "detail": detail}, status_code=403)
    else:
        response = error_page(request, 403, "Forbidden", detail)
    if detail == CSRF_REFUSED:
        # Exception handlers are synchronous: the audit row is written once the answer is sent.
        response.background = BackgroundTask(audit_csrf_refusal, request)
    return response


def _not_found(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    detail = str(exc) if isinstance(exc, NotFound) else "Not found"
    if _wants_json(request):
        return Response({"status_code": 404, "detail": detail}, status_code=404)
    return error_page(request, 404, "Not found", detail)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if _wants_json(request) or exc.status_code < 400:
        return Response(
            {"status_code": exc.status_code, "detail": exc.detail, "extra": exc.extra},
            status_code=exc.status_code,
        )
    return error_page(request, exc.status_code, str(exc.status_code), exc.detail)


def _server_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Anything unexpected (logged with its traceback by Litestar): a message the GUI can show
    where the user acted, never the traceback."""
    if _wants_json(request):
        return Response({"status_code": 500, "detail": "Internal Server Error"}, status_code=500)
    return error_page(
        request,
        500,
        Message("Internal error"),
        Message("Something went wrong on the server: see its log."),
    )


FORM_MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings) -> Litestar:
    ensure_secret_key(settings.secret_key_file)
    box = SecretBox(settings.secret_key_file)
    # The CSRF secret is derived from the node's key file: stable across restarts, never stored.
    csrf_secret = hashlib.sha256(b"csrf:" + settings.secret_key_file.read_bytes()).hexdigest()

    async def on_startup(app: Litestar) -> None:
        await pool.start_for_pages(min_size=1, max_size=10)

    async def on_shutdown(app: Litestar) -> None:
        await DB.close_connection_pool()

    app = Litestar(
        route_handlers=[
            *(Router("/", route_handlers=controllers) for controllers in AREAS.values()),
            automation.router,
            create_static_files_router(
                path="/static", directories=[ROOT / "static"], opt={"public": True}
            ),
        ],
        guards=[access_guard],
        # Litestar's default is 10 MB, and the CSRF check parses a form body before it refuses
        # it, on the event loop, for anyone (the login form is public): a 10 MB form cost
        # seconds of CPU and 200 MiB. The GUI's largest form is a few KiB; the API's routes
        # keep their own 16 KiB.
        request_max_body_size=FORM_MAX_BODY_BYTES,
        middleware=[DefineMiddleware(CallerMiddleware, exclude=PUBLIC_PATHS)],
        before_send=[add_security_headers],
        csrf_config=CSRFConfig(
            secret=csrf_secret,
            cookie_secure=True,
            cookie_httponly=True,
            cookie_samesite="strict",
            cookie_name=CSRF_COOKIE,
            # A regex searched anywhere in the path: anchored, or /users/api/reset would pass.
            exclude=["^/api/"],
        ),
        template_config=TemplateConfig(instance=template_engine(ROOT / "templates")),
        plugins=[HTMXPlugin()],
        openapi_config=OpenAPIConfig(
            title="mailrelay-ha API",
            version="1",
            render_plugins=[JsonRenderPlugin()],
            # The schema documents the API; it holds nothing secret, so it is public.
            openapi_router=Router(path="/api/schema", route_handlers=[], opt={"public": True}),
        ),
        exception_handlers={
            NotAuthorizedException: _not_logged_in,
            PermissionDeniedException: _forbidden,
            PasswordChangeRequired: lambda r, e: done(r, "/password"),
            SecondFactorPending: lambda r, e: done(r, mfa.STAGE_PAGES[e.stage]),
            NotFoundException: _not_found,
            NotFound: _not_found,
            HTTPException: _http_error,
            HTTP_500_INTERNAL_SERVER_ERROR: _server_error,
        },
        # Log every unexpected exception with its traceback; an operator needs it. Through the
        # process's own handler (app.logsetup: priorities in the journal), not a second one.
        logging_config=LoggingConfig(
            log_exceptions="always",
            configure_root_logger=False,
            loggers={"litestar": {"level": "INFO", "propagate": True}},
        ),
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
    )
    app.state.settings = settings
    app.state.box = box
    app.state.agent = AgentClient(settings.agent_socket)
    app.state.switchovers = {}  # the GUI's switchover runs by ID (controllers/cluster.py)
    return app
