"""Helpers every screen uses: the page context, HTMX-or-not form answers, redirects."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.plugins.htmx import HTMXDetails
from litestar.response import Redirect, Response, Template
from litestar.status_codes import HTTP_303_SEE_OTHER, HTTP_422_UNPROCESSABLE_ENTITY

from app.auth.roles import Role
from app.auth.sessions import SessionUser
from app.web import assets
from app.web.i18n import from_accept_language, plural_translator, translator

Request_ = Request[Any, Any, Any]


def language_of(request: Request_) -> str:
    user = request.scope.get("user")
    if isinstance(user, SessionUser) and user.language:
        return user.language
    return from_accept_language(request.headers.get("accept-language"))


def context(request: Request_, **extra: Any) -> dict[str, Any]:
    settings = request.app.state.settings
    user = request.scope.get("user")
    user = user if isinstance(user, SessionUser) else None
    lang = language_of(request)
    return {
        "_": translator(lang),
        "ngettext": plural_translator(lang),
        "lang": lang,
        "user": user,
        "Role": Role,
        "can_operate": bool(user and user.role >= Role.operator),
        "is_admin": bool(user and user.role >= Role.admin),
        "settings": settings,
        "config_editable": settings.cluster_mode == "master",
        "htmx_src": assets.HTMX_LOCAL_PATH
        if settings.htmx_source == "local"
        else assets.HTMX_CDN_URL,
        "htmx_sri": assets.HTMX_SRI,
        "htmx_crossorigin": settings.htmx_source == "cdn",
        "path": request.url.path,
        **extra,
    }


def page(request: Request_, template: str, status_code: int = 200, **extra: Any) -> Template:
    return Template(template, context=context(request, **extra), status_code=status_code)


def is_htmx(request: Request_) -> bool:
    return bool(HTMXDetails(request))


def error_page(
    request: Request_,
    status_code: int,
    title: str,
    detail: str,
    page_template: str | None = None,
    **extra: Any,
) -> Template:
    """A refusal or failure. For HTMX the message alone, which static/app.js shows next to the
    element the user acted on; without JavaScript `page_template` (the screen the user acted
    on, given `extra` as its context) with the message as `action_error` by the form, or else
    the error page."""
    if is_htmx(request):
        return page(request, "_error.html", status_code, detail=detail)
    if page_template:
        return page(request, page_template, status_code, action_error=detail, **extra)
    return page(request, "error.html", status_code, title=title, detail=detail)


def form_answer(
    request: Request_,
    page_template: str,
    fragment_template: str,
    errors: dict[str, str],
    **extra: Any,
) -> Template:
    """Validation failed: the form again with its inline errors, as a fragment for HTMX or as the
    whole page without JavaScript. 422 either way (htmx is configured to swap it)."""
    template = fragment_template if is_htmx(request) else page_template
    return page(request, template, HTTP_422_UNPROCESSABLE_ENTITY, errors=errors, **extra)


def done(request: Request_, location: str) -> Response[Any]:
    """After a successful change: HTMX reloads via HX-Redirect, a plain form follows the 303."""
    if is_htmx(request):
        return Response(content=b"", status_code=200, headers={"HX-Redirect": location})
    return Redirect(path=location, status_code=HTTP_303_SEE_OTHER)
