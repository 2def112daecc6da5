"""Login, logout, the (forced) password change and the language switch."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromQuery
from litestar.response import Redirect, Response, Template
from litestar.status_codes import HTTP_303_SEE_OTHER

from app.auth import sessions, users
from app.auth.passwords import PasswordRuleError
from app.auth.sessions import COOKIE_NAME, SessionUser
from app.messages import Message, message_of
from app.web.auth import source_ip
from app.web.controllers.mfa import after_password
from app.web.i18n import LANGUAGES
from app.web.views import form_answer, page

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]

# The one answer to every failed login: unknown user, wrong password and throttled alike.
LOGIN_FAILED = Message(
    "Wrong username or password, or too many attempts: wait a few minutes and try again."
)


def _safe_next(value: str | None) -> str:
    # Only local paths: a login link must not send anyone to another site.
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def _set_session_cookie(response: Response[Any], value: str, max_age: int | None = None) -> None:
    # The __Host- prefix needs Secure, Path=/ and no Domain on every Set-Cookie, the deletion too.
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=max_age,
        secure=True,
        httponly=True,
        samesite="strict",
        path="/",
    )


class Session(Controller):
    """Login, logout, the (forced) password change and the language switch."""

    @get("/login", opt={"public": True}, exclude_from_auth=True)
    async def login_page(
        self, request: Request[Any, Any, Any], next: FromQuery[str | None] = None
    ) -> Template:
        return page(request, "login/page.html", next=_safe_next(next), errors={})

    @post("/login", opt={"public": True}, exclude_from_auth=True)
    async def login(self, request: Request[Any, Any, Any], data: Form) -> Response[Any]:
        result = await users.authenticate(
            data.get("username", ""), data.get("password", ""), source_ip(request)
        )
        target = _safe_next(data.get("next"))
        if result.token is None:
            return form_answer(
                request,
                "login/page.html",
                "login/page.html",
                {"form": LOGIN_FAILED},
                next=target,
                username=data.get("username", ""),
            )
        # The second factor (or its enrolment, where the role requires one) comes before anything.
        second_factor_page = await after_password(result.token)
        response = Redirect(
            path=second_factor_page or ("/password" if result.must_change_password else target),
            status_code=HTTP_303_SEE_OTHER,
        )
        _set_session_cookie(response, result.token)
        return response

    @post("/logout", opt={"before_password_change": True, "second_factor": "any"})
    async def logout(self, request: Request[SessionUser, Any, Any]) -> Response[Any]:
        await sessions.end_session(request.user.session_id)
        response = Redirect(path="/login", status_code=HTTP_303_SEE_OTHER)
        _set_session_cookie(response, "", max_age=0)
        return response

    @get("/password", opt={"before_password_change": True})
    async def password_page(self, request: Request[SessionUser, Any, Any]) -> Template:
        return page(request, "password/page.html", errors={})

    @post("/password", opt={"before_password_change": True})
    async def change_password(
        self, request: Request[SessionUser, Any, Any], data: Form
    ) -> Response[Any]:
        new = data.get("new_password", "")
        try:
            if new != data.get("new_password_again", ""):
                raise users.UserError(Message("The two new passwords differ."))
            await users.change_password(
                request.user, data.get("current_password", ""), new, source_ip(request)
            )
        except (users.UserError, PasswordRuleError) as exc:
            return form_answer(
                request, "password/page.html", "password/page.html", {"form": message_of(exc)}
            )
        return Redirect(path="/", status_code=HTTP_303_SEE_OTHER)

    @post("/language", opt={"before_password_change": True})
    async def set_language(
        self, request: Request[SessionUser, Any, Any], data: Form
    ) -> Response[Any]:
        choice = data.get("language", "")
        await users.set_language(request.user.id, choice if choice in LANGUAGES else None)
        referer = request.headers.get("referer", "/")
        path = "/" + referer.split("://", 1)[-1].split("/", 1)[-1] if "://" in referer else "/"
        return Redirect(path=_safe_next(path), status_code=HTTP_303_SEE_OTHER)
