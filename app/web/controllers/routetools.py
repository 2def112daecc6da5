"""Route tools: "Which route?" for a sender and recipient, and a live test of a route."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.response import Template

from app import audit
from app.auth.sessions import SessionUser
from app.config import applied, service, validation
from app.config.validation import FieldErrors
from app.crypto import SecretKeyError
from app.db.tables import RelayRoute, SenderDomain
from app.messages import Message, joined
from app.postfix import render, routecheck, routetest
from app.web.auth import source_ip
from app.web.views import form_answer, is_htmx, page

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
Req = Request[SessionUser, Any, Any]
OPERATE = {"role": "operator"}


async def _routes() -> list[dict[str, Any]]:
    return await RelayRoute.select(
        RelayRoute.sender_domain.name.as_alias("domain"),
        RelayRoute.host,
        RelayRoute.port,
        RelayRoute.tls_mode,
        RelayRoute.auth_user,
    ).order_by(RelayRoute.sender_domain.name)


async def _versions(node_id: str) -> tuple[int | None, int | None]:
    """(the version applied on this node, the latest version)."""
    latest = await service.newest_listed()
    return (await applied.number_of(node_id) or None, latest["number"] if latest else None)


async def _applied_files(number: int | None) -> dict[str, bytes] | None:
    """The maps of the applied version, which are the bytes Postfix runs with (rendering is
    deterministic; the live files themselves belong to root). Which route needs no password:
    every one renders as a placeholder, so none is decrypted here."""
    if number is None:
        return None
    try:
        version = await service.get_version(number)
        return render.render(number, version["snapshot"], lambda _: "********").files
    except (service.NotFound, render.RenderError):
        return None


async def _page_context(request: Req, **extra: Any) -> dict[str, Any]:
    applied, latest = await _versions(request.app.state.settings.node_id)
    return {
        "routes": await _routes(),
        "applied_version": applied,
        "latest_version": latest,
        "form": {},
        "errors": {},
        "answer": None,
        "report": None,
        "test_domain": None,
        "test_error": None,
        **extra,
    }


def _tested(route: dict[str, Any], data: dict[str, str]) -> dict[str, Any]:
    """The settings to test: the stored route's, replaced by any the form sends, held to the
    rules a saved route meets (no test to this host's own loopback, say)."""
    return validation.collect(
        {
            "host": (validation.relay_host, data.get("host", route["host"])),
            "port": (validation.port, data.get("port", route["port"])),
            "tls_mode": (validation.tls_mode, data.get("tls_mode", route["tls_mode"])),
            "auth_user": (validation.auth_user, data.get("auth_user", route["auth_user"] or "")),
            "auth_password": (validation.auth_password, data.get("auth_password", "")),
        }
    )


def _stored_password_applies(route: dict[str, Any], tested: dict[str, Any]) -> bool:
    """A stored password goes only where Postfix sends it: the relay it was saved for, with the
    route's own TLS mode. Settings that differ (another host, or weaker TLS to the same one)
    never get it, so that editing a form cannot make the test hand it to someone else."""
    return (route["host"], route["port"], route["tls_mode"]) == (
        tested["host"],
        tested["port"],
        tested["tls_mode"],
    )


async def _test(
    request: Req, domain: str, route: dict[str, Any], tested: dict[str, Any]
) -> tuple[routetest.RouteTestReport | None, str | None]:
    """Run the test with the typed password or, for the stored relay only, the stored one,
    decrypted in memory for this call only; audit it without any secret."""
    user = tested["auth_user"] or None
    password = tested["auth_password"] or None
    if user and not password:
        if not (route["auth_password_enc"] and _stored_password_applies(route, tested)):
            return None, (
                Message(
                    "These settings differ from the stored route, and its password is only sent "
                    "to the relay it was saved for: type the SMTP AUTH password to test them."
                )
                if route["auth_password_enc"]
                else Message("SMTP AUTH needs a password.")
            )
        try:
            password = request.app.state.box.decrypt(route["auth_password_enc"])
        except SecretKeyError:
            await _audit(request, domain, tested, "failed", ["the password does not decrypt"])
            return None, Message("The stored password does not decrypt with this node's key.")
    report = await routetest.test_route(
        tested["host"],
        tested["port"],
        tested["tls_mode"],
        auth_user=user,
        auth_password=password,
        helo_name=request.app.state.settings.hostname,
    )
    del password
    failed = [f"{s.name}: {s.error}" for s in report.steps if not s.ok]
    await _audit(request, domain, tested, "ok" if report.ok else "failed", failed)
    return report, None


async def _audit(
    request: Req, domain: str, tested: dict[str, Any], outcome: str, failed: list[str]
) -> None:
    await audit.record(
        request.user.username,
        "route.test",
        domain,
        source_ip(request),
        outcome=outcome,
        after={
            "target": f"[{tested['host']}]:{tested['port']}",
            "tls_mode": tested["tls_mode"],
            "auth_user": tested["auth_user"] or None,
            "failed": failed,
        },
    )


class RouteTools(Controller):
    """ "Which route?" and the live test of a route."""

    @get("/routes/tools")
    async def route_tools_page(self, request: Req) -> Template:
        return page(request, "routetools/page.html", **await _page_context(request))

    @post("/routes/which")
    async def ask_which_route(self, request: Req, data: Form) -> Template:
        form = {"sender": data.get("sender", ""), "recipient": data.get("recipient", "")}
        ctx = await _page_context(request, form=form)
        try:
            ctx["answer"] = routecheck.which_route_in(
                form["sender"], form["recipient"], await _applied_files(ctx["applied_version"])
            )
        except routecheck.RouteCheckError as exc:
            ctx.pop("errors")
            return form_answer(
                request, "routetools/page.html", "routetools/_which.html", exc.errors, **ctx
            )
        template = "routetools/_which.html" if is_htmx(request) else "routetools/page.html"
        return page(request, template, **ctx)

    @post("/routes/{domain:str}/test", opt=OPERATE)
    async def run_route_test(self, request: Req, domain: FromPath[str], data: Form) -> Template:
        """Test the stored route, or the settings the route form holds (its host, port, TLS mode,
        user and a typed password) before they are saved."""
        row = await SenderDomain.select(SenderDomain.id).where(SenderDomain.name == domain).first()
        if row is None:
            raise service.NotFound(Message("There is no sender domain {name}.", name=domain))
        route = await RelayRoute.select().where(RelayRoute.sender_domain == row["id"]).first()
        report: routetest.RouteTestReport | None = None
        error: str | None = None
        if route is None:
            error = Message("No route: mail goes out directly to the recipient's MX.")
        else:
            try:
                tested = _tested(route, data)
            except FieldErrors as exc:
                error = joined(" ", list(exc.errors.values()))
            else:
                report, error = await _test(request, domain, route, tested)
        template = "routetools/_test.html" if is_htmx(request) else "routetools/page.html"
        ctx = await _page_context(request, report=report, test_domain=domain, test_error=error)
        return page(request, template, **ctx)
