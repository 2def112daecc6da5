"""Second-factor screens: enrolment and management (/mfa) and the step after the password
(/mfa/verify), for authenticator apps, security keys and recovery codes."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.response import Redirect, Response, Template
from litestar.status_codes import HTTP_303_SEE_OTHER, HTTP_422_UNPROCESSABLE_ENTITY

from app.auth import mfa
from app.auth.refusal import Refusal
from app.auth.securitykeys import RelyingParty, SecurityKeyError, relying_party
from app.auth.sessions import SessionUser
from app.tls import served_names
from app.web.auth import SessionAuth, source_ip
from app.web.i18n import translator
from app.web.views import language_of, page

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
Req = Request[SessionUser, Any, Any]
# Reachable before a pending password change: the second factor comes first after the password.
MANAGE = {"second_factor": mfa.ENROL, "before_password_change": True}
VERIFY = {"second_factor": mfa.VERIFY, "before_password_change": True}
# Where a session that lacks a second-factor step is sent.
STAGE_PAGES = {mfa.VERIFY: "/mfa/verify", mfa.ENROL: "/mfa"}


async def after_password(token: str) -> str | None:
    """The page a just logged-in session must see first when it lacks a second factor."""
    stage = await mfa.start_login(token)
    return STAGE_PAGES[stage] if stage else None


def _stage(request: Req) -> str | None:
    auth = request.scope.get("auth")
    return auth.second_factor if isinstance(auth, SessionAuth) else None


def _rp(request: Req) -> RelyingParty:
    settings = request.app.state.settings
    url = request.url
    served: frozenset[str] = frozenset()
    if settings.webauthn_rp_id:
        # No readable certificate: no name is served, and keys are refused with the reason.
        with contextlib.suppress(OSError, ValueError):
            served = served_names(settings.tls_cert_file or settings.generated_cert_file)
    return relying_party(
        url.hostname or "",
        f"{url.scheme}://{url.netloc}",
        settings.webauthn_rp_id,
        f"mailrelay {settings.node_id}",
        served,
    )


def _say(request: Req, refusal: Refusal) -> str:
    return translator(language_of(request))(refusal.message, *refusal.params)


def _home() -> Response[Any]:
    return Redirect(path="/", status_code=HTTP_303_SEE_OTHER)


def _json_refusal(request: Req, refusal: Refusal) -> Response[Any]:
    return Response({"detail": _say(request, refusal)}, status_code=HTTP_422_UNPROCESSABLE_ENTITY)


async def _manage_page(request: Req, error: str = "", status_code: int = 200) -> Template:
    user = request.user
    key_problem = ""
    try:
        _rp(request)
    except SecurityKeyError as exc:
        key_problem = _say(request, exc)
    return page(
        request,
        "mfa/page.html",
        status_code,
        factors=await mfa.factors(user.id),
        codes_left=await mfa.recovery_codes_left(user.id),
        required=await mfa.required_for(user.role),
        enrolling=_stage(request) == mfa.ENROL,
        half_session=_stage(request) is not None,
        key_problem=key_problem,
        error=error,
    )


def _codes_page(request: Req, codes: list[str]) -> Template:
    return page(request, "mfa/codes.html", codes=codes)


def _after_enrolment(request: Req, codes: list[str] | None) -> Response[Any]:
    if codes is not None:
        return _codes_page(request, codes)
    return Redirect(path="/mfa", status_code=HTTP_303_SEE_OTHER)


def _totp_page(request: Req, secret: str, error: str = "", status_code: int = 200) -> Template:
    settings = request.app.state.settings
    return page(
        request,
        "mfa/totp.html",
        status_code,
        secret=secret,
        qr=mfa.totp_qr(secret, request.user.username, settings.node_id),
        half_session=_stage(request) is not None,
        error=error,
    )


async def _verify_page(request: Req, error: str = "", status_code: int = 200) -> Template:
    kinds = {factor.kind for factor in await mfa.factors(request.user.id)}
    return page(
        request,
        "mfa/verify.html",
        status_code,
        has_totp=mfa.TOTP in kinds,
        has_key=mfa.WEBAUTHN in kinds,
        half_session=True,
        error=error,
    )


class Enrolment(Controller):
    """Enrolment and management of a user's second factors."""

    @get("/mfa", opt=MANAGE)
    async def mfa_page(self, request: Req) -> Template:
        return await _manage_page(request)

    @post("/mfa/totp/new", opt=MANAGE)
    async def new_totp(self, request: Req) -> Response[Any]:
        try:
            secret = await mfa.begin_totp(request.user, request.app.state.box)
        except mfa.MfaError as exc:
            return await _manage_page(request, _say(request, exc), HTTP_422_UNPROCESSABLE_ENTITY)
        return _totp_page(request, secret)

    @post("/mfa/totp", opt=MANAGE)
    async def confirm_totp(self, request: Req, data: Form) -> Response[Any]:
        box = request.app.state.box
        try:
            codes = await mfa.confirm_totp(
                request.user, box, data.get("code", ""), data.get("name", ""), source_ip(request)
            )
        except mfa.MfaError as exc:
            secret = await mfa.pending_totp(request.user, box)
            if secret is None:
                return await _manage_page(
                    request, _say(request, exc), HTTP_422_UNPROCESSABLE_ENTITY
                )
            return _totp_page(request, secret, _say(request, exc), HTTP_422_UNPROCESSABLE_ENTITY)
        return _after_enrolment(request, codes)

    @post("/mfa/keys/options", opt=MANAGE)
    async def key_registration_options(self, request: Req) -> Response[Any]:
        try:
            options = await mfa.key_registration_options(request.user, _rp(request))
        except Refusal as exc:
            return _json_refusal(request, exc)
        return Response(options, media_type="application/json")

    @post("/mfa/keys", opt=MANAGE)
    async def register_key(self, request: Req, data: Form) -> Response[Any]:
        try:
            codes = await mfa.register_key(
                request.user,
                _rp(request),
                data.get("credential", ""),
                data.get("name", ""),
                source_ip(request),
            )
        except Refusal as exc:
            return await _manage_page(request, _say(request, exc), HTTP_422_UNPROCESSABLE_ENTITY)
        return _after_enrolment(request, codes)

    @post("/mfa/recovery", opt=MANAGE)
    async def new_recovery_codes(self, request: Req) -> Response[Any]:
        try:
            codes = await mfa.new_recovery_codes(request.user, source_ip(request))
        except mfa.MfaError as exc:
            return await _manage_page(request, _say(request, exc), HTTP_422_UNPROCESSABLE_ENTITY)
        return _codes_page(request, codes)

    @post("/mfa/factors/{factor_id:int}/remove", opt=MANAGE)
    async def remove_factor(self, request: Req, factor_id: FromPath[int]) -> Response[Any]:
        try:
            await mfa.remove_factor(request.user, factor_id, source_ip(request))
        except mfa.MfaError as exc:
            return await _manage_page(request, _say(request, exc), HTTP_422_UNPROCESSABLE_ENTITY)
        return Redirect(path="/mfa", status_code=HTTP_303_SEE_OTHER)


class Verification(Controller):
    """The step after the password: a second factor, or a recovery code."""

    @get("/mfa/verify", opt=VERIFY)
    async def verify_page(self, request: Req) -> Response[Any]:
        if _stage(request) != mfa.VERIFY:
            return _home()
        return await _verify_page(request)

    @post("/mfa/verify/totp", opt=VERIFY)
    async def verify_totp(self, request: Req, data: Form) -> Response[Any]:
        if _stage(request) != mfa.VERIFY:
            return _home()
        try:
            await mfa.verify_totp(
                request.user, request.app.state.box, data.get("code", ""), source_ip(request)
            )
        except mfa.MfaError as exc:
            return await _verify_page(request, _say(request, exc), HTTP_422_UNPROCESSABLE_ENTITY)
        return _home()

    @post("/mfa/verify/recovery", opt=VERIFY)
    async def verify_recovery_code(self, request: Req, data: Form) -> Response[Any]:
        if _stage(request) != mfa.VERIFY:
            return _home()
        try:
            await mfa.verify_recovery_code(request.user, data.get("code", ""), source_ip(request))
        except mfa.MfaError as exc:
            return await _verify_page(request, _say(request, exc), HTTP_422_UNPROCESSABLE_ENTITY)
        # Whoever needs a recovery code has likely lost a factor: show what is left to fix it.
        return Redirect(path="/mfa", status_code=HTTP_303_SEE_OTHER)

    @post("/mfa/verify/key/options", opt=VERIFY)
    async def key_authentication_options(self, request: Req) -> Response[Any]:
        if _stage(request) != mfa.VERIFY:
            return _json_refusal(request, mfa.MfaError("You are logged in already."))
        try:
            options = await mfa.key_authentication_options(request.user, _rp(request))
        except Refusal as exc:
            return _json_refusal(request, exc)
        return Response(options, media_type="application/json")

    @post("/mfa/verify/key", opt=VERIFY)
    async def verify_key(self, request: Req, data: Form) -> Response[Any]:
        if _stage(request) != mfa.VERIFY:
            return _home()
        try:
            await mfa.verify_key(
                request.user, _rp(request), data.get("credential", ""), source_ip(request)
            )
        except Refusal as exc:
            return await _verify_page(request, _say(request, exc), HTTP_422_UNPROCESSABLE_ENTITY)
        return _home()
