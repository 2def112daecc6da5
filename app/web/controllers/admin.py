"""Admin screens: users (with their second factors and the per-role policy), API tokens and the
audit log."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Response, Template

from app import reports
from app.auth import mfa, throttle, tokens, users
from app.auth.passwords import PasswordRuleError
from app.auth.refusal import Refusal
from app.auth.roles import Role
from app.auth.sessions import SessionUser
from app.db.tables import AppUser
from app.messages import message_of
from app.web import listing as listings
from app.web.auth import source_ip
from app.web.i18n import translator
from app.web.views import done, form_answer, is_htmx, language_of, page

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
Req = Request[SessionUser, Any, Any]
ADMIN = {"role": "admin"}


USER_SORT: dict[str, Any] = {
    "username": lambda u: u["username"],
    "role": lambda u: Role.parse(u["role"]) if isinstance(u["role"], str) else u["role"],
    "last_login_at": lambda u: _when(u["last_login_at"]),
}
TOKEN_SORT: dict[str, Any] = {
    "name": lambda t: t["name"],
    "kind": lambda t: t["kind"],
    "expires_at": lambda t: _when(t["expires_at"]),
    "created_at": lambda t: _when(t["created_at"]),
    "last_used_at": lambda t: _when(t["last_used_at"]),
}


def _when(moment: dt.datetime | None) -> tuple[bool, dt.datetime]:
    """A sort key for a time that may be missing ("never"): missing ones last."""
    return (moment is None, moment or dt.datetime.min.replace(tzinfo=dt.UTC))


async def _users(sort: str = "", direction: str = "", page_no: int = 1) -> listings.Listing:
    order = listings.listing(
        "/users", list(USER_SORT), sort, direction, page_no, ("username", "asc")
    )
    rows = await AppUser.select(
        AppUser.username,
        AppUser.role,
        AppUser.must_change_password,
        AppUser.last_login_at,
        AppUser.language,
    ).order_by(AppUser.username)
    refused = await throttle.refused_until()  # until then login attempts are refused
    return order.of(
        [{**row, "locked_until": refused.get(row["username"])} for row in rows], USER_SORT
    )


async def _tokens(sort: str = "", direction: str = "", page_no: int = 1) -> listings.Listing:
    order = listings.listing("/tokens", list(TOKEN_SORT), sort, direction, page_no, ("name", "asc"))
    return order.of(await tokens.list_tokens(), TOKEN_SORT)


async def _users_screen(sort: str = "", direction: str = "", page_no: int = 1) -> dict[str, Any]:
    """What the users page shows besides its form: a page of the users, the roles, each user's
    second factors by kind, and which roles must have one."""
    return {
        "users": await _users(sort, direction, page_no),
        "roles": list(Role),
        "second_factors": await mfa.factor_summary(),
        "second_factor_policy": await mfa.policy(),
    }


async def _token_refused(request: Req, exc: tokens.TokenError, form: dict[str, str]) -> Template:
    """The tokens page with why creating or revoking a token was refused."""
    return form_answer(
        request,
        "tokens/page.html",
        "tokens/page.html",
        {"form": message_of(exc)},
        tokens=await _tokens(),
        new_token=None,
        form=form,
    )


def _role(value: str) -> Role:
    try:
        return Role.parse(value)
    except ValueError as exc:
        raise users.UserError(message_of(exc)) from None


async def _user_action(request: Req, data: Form, username: str, action: str) -> Response[Any]:
    actor, ip = request.user.username, source_ip(request)
    try:
        if action == "role":
            await users.set_role(username, _role(data.get("role", "")), actor, ip)
        elif action == "reset":
            await users.reset_password(username, data.get("password", ""), actor, ip)
        elif action == "second-factor":
            await mfa.reset(username, actor, ip)
        else:
            await users.delete_user(username, actor, ip)
    except (users.UserError, PasswordRuleError, Refusal) as exc:
        _ = translator(language_of(request))
        message = _(exc.message, *exc.params) if isinstance(exc, Refusal) else _(message_of(exc))
        return form_answer(
            request,
            "users/page.html",
            "users/page.html",
            {"form": f"{username}: {message}"},
            **await _users_screen(),
            form={},
        )
    return done(request, "/users")


class Users(Controller):
    """Users, their second factors and the per-role second-factor policy."""

    @get("/users", opt=ADMIN)
    async def users_page(
        self,
        request: Req,
        sort: FromQuery[str] = "",
        direction: listings.Direction = "",
        page_no: FromQuery[int] = 1,
    ) -> Template:
        return page(
            request,
            "users/page.html",
            errors={},
            form={},
            **await _users_screen(sort, direction, page_no),
        )

    @post("/users", opt=ADMIN)
    async def create_user(self, request: Req, data: Form) -> Response[Any]:
        try:
            await users.create_user(
                data.get("username", ""),
                data.get("password", ""),
                _role(data.get("role", "")),
                request.user.username,
                source_ip(request),
            )
        except (users.UserError, PasswordRuleError) as exc:
            return form_answer(
                request,
                "users/page.html",
                "users/_form.html",
                {"form": message_of(exc)},
                **await _users_screen(),
                form={"username": data.get("username", "")},
            )
        return done(request, "/users")

    @post("/users/{username:str}/role", opt=ADMIN)
    async def set_role(self, request: Req, username: FromPath[str], data: Form) -> Response[Any]:
        return await _user_action(request, data, username, "role")

    @post("/users/{username:str}/reset", opt=ADMIN)
    async def reset_password(
        self, request: Req, username: FromPath[str], data: Form
    ) -> Response[Any]:
        return await _user_action(request, data, username, "reset")

    @post("/users/{username:str}/delete", opt=ADMIN)
    async def delete_user(self, request: Req, username: FromPath[str], data: Form) -> Response[Any]:
        return await _user_action(request, data, username, "delete")

    @post("/users/{username:str}/second-factor/reset", opt=ADMIN)
    async def reset_second_factor(
        self, request: Req, username: FromPath[str], data: Form
    ) -> Response[Any]:
        return await _user_action(request, data, username, "second-factor")

    @post("/users/second-factor-policy", opt=ADMIN)
    async def set_second_factor_policy(self, request: Req, data: Form) -> Response[Any]:
        required = {role for role in Role if data.get(f"require_{role.name}") == "on"}
        await mfa.set_policy(required, request.user.username, source_ip(request))
        return done(request, "/users")


class Tokens(Controller):
    """API tokens."""

    @get("/tokens", opt=ADMIN)
    async def tokens_page(
        self,
        request: Req,
        sort: FromQuery[str] = "",
        direction: listings.Direction = "",
        page_no: FromQuery[int] = 1,
    ) -> Template:
        return page(
            request,
            "tokens/page.html",
            tokens=await _tokens(sort, direction, page_no),
            errors={},
            new_token=None,
            form={},
        )

    @post("/tokens", opt=ADMIN)
    async def create_token(self, request: Req, data: Form) -> Template:
        try:
            token = await tokens.create(
                data.get("name", ""),
                data.get("kind", ""),
                request.user.username,
                source_ip(request),
                networks=data.get("networks", ""),
                valid_days=data.get("valid_days", ""),
            )
        except tokens.TokenError as exc:
            return await _token_refused(request, exc, data)
        # Shown once, on this answer only; never stored in clear.
        return page(
            request,
            "tokens/page.html",
            tokens=await _tokens(),
            errors={},
            new_token=token,
            form={},
        )

    @post("/tokens/{name:str}/revoke", opt=ADMIN)
    async def revoke_token(self, request: Req, name: FromPath[str]) -> Response[Any]:
        try:
            await tokens.revoke(name, request.user.username, source_ip(request))
        except tokens.TokenError as exc:
            return await _token_refused(request, exc, {})
        return done(request, "/tokens")


class Audit(Controller):
    """The audit log (every role may read it)."""

    @get("/audit")
    async def audit_page(
        self,
        request: Req,
        actor: FromQuery[str] = "",
        action: FromQuery[str] = "",
        outcome: FromQuery[str] = "",
        since: FromQuery[str] = "",
        until: FromQuery[str] = "",
        sort: FromQuery[str] = "",
        direction: listings.Direction = "",
        page_no: FromQuery[int] = 1,
    ) -> Template:
        filters = {
            "actor": actor,
            "action": action,
            "outcome": outcome,
            "since": since,
            "until": until,
        }
        entries = listings.listing(
            "/audit",
            list(reports.AUDIT_SORT),
            sort,
            direction,
            page_no,
            ("at", "desc"),
            filters,
            target="audit-table",
        )
        since_at, until_at = listings.days(since, until)
        rows = await reports.audit_entries(
            actor=actor.strip(),
            action=action.strip(),
            outcome=outcome.strip(),
            since=since_at,
            until=until_at,
            limit=entries.size + 1,
            offset=entries.offset,
            sort=entries.sort,
            descending=entries.descending,
        )
        template = "audit/_table.html" if is_htmx(request) else "audit/page.html"
        return page(request, template, entries=entries.with_rows(rows), filters=filters)
