"""Screens for sender domains, their routes and the trusted networks."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Response, Template

from app.auth.sessions import SessionUser
from app.config import service
from app.config.validation import TLS_MODES, FieldErrors
from app.db.tables import RelayRoute, SenderDomain, TrustedNetwork
from app.messages import Message, message_of
from app.web import listing as listings
from app.web.auth import source_ip
from app.web.views import done, error_page, form_answer, page

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
Req = Request[SessionUser, Any, Any]
CHANGE = {"role": "operator", "master_only": True}


def actor(request: Req) -> service.Actor:
    return service.Actor(request.user.username, source_ip(request))


DOMAIN_SORT: dict[str, Any] = {
    "name": lambda d: d["name"],
    "route": lambda d: (d["route"] is None, d["route"]["host"] if d["route"] else ""),
    "comment": lambda d: d["comment"].lower(),
}
NETWORK_SORT: dict[str, Any] = {
    # IPv4 before IPv6, each in address order (networks of two versions do not compare).
    "cidr": lambda n: (ipaddress.ip_network(n["cidr"]).version, ipaddress.ip_network(n["cidr"])),
    "comment": lambda n: n["comment"].lower(),
}


async def _domains(
    path: str = "/domains", sort: str = "", direction: str = "", page_no: int = 1
) -> listings.Listing:
    """The sender domains, each with its route, a page of them in the order asked for."""
    domains = await SenderDomain.select()
    routes = {r["sender_domain"]: r for r in await RelayRoute.select()}
    for domain in domains:
        domain["route"] = routes.get(domain["id"])
    order = listings.listing(path, list(DOMAIN_SORT), sort, direction, page_no, ("name", "asc"))
    return order.of(domains, DOMAIN_SORT)


def _gone(request: Req, exc: service.NotFound, template: str, **ctx: Any) -> Template:
    """What a delete acted on is gone already (another tab, another admin): the list as it is
    now, with the message by it (HTMX: the message alone, shown by the button)."""
    return error_page(
        request, 404, "Not found", message_of(exc), page_template=template, errors={}, **ctx
    )


async def _route_form(domain: str) -> dict[str, Any]:
    row = await SenderDomain.select().where(SenderDomain.name == domain).first()
    if row is None:
        raise service.NotFound(Message("There is no sender domain {name}.", name=domain))
    route = await RelayRoute.select().where(RelayRoute.sender_domain == row["id"]).first()
    return {
        "domain": domain,
        "route": route,
        "tls_modes": TLS_MODES,
        "form": {
            "host": route["host"] if route else "",
            "port": str(route["port"]) if route else "25",
            "tls_mode": route["tls_mode"] if route else "may",
            "auth_user": (route["auth_user"] or "") if route else "",
        },
        "password_set": bool(route and route["auth_password_enc"]),
    }


async def _networks(sort: str = "", direction: str = "", page_no: int = 1) -> listings.Listing:
    order = listings.listing(
        "/networks", list(NETWORK_SORT), sort, direction, page_no, ("cidr", "asc")
    )
    return order.of(await TrustedNetwork.select(), NETWORK_SORT)


async def _add(
    request: Req,
    data: Form,
    screen: str,
    adding: Awaitable[int],
    listed: Callable[[], Awaitable[listings.Listing]],
) -> Response[Any]:
    """A domain or network added from its form: back to its list, or (`screen`: "domains" or
    "networks") the form again with what was typed and why it was refused."""
    try:
        await adding
    except FieldErrors as exc:
        return form_answer(
            request,
            f"{screen}/page.html",
            f"{screen}/_form.html",
            exc.errors,
            **{screen: await listed()},
            form=data,
        )
    return done(request, f"/{screen}")


class Domains(Controller):
    """The sender domains."""

    @get("/domains")
    async def domains_page(
        self,
        request: Req,
        sort: FromQuery[str] = "",
        direction: listings.Direction = "",
        page_no: FromQuery[int] = 1,
    ) -> Template:
        domains = await _domains("/domains", sort, direction, page_no)
        return page(request, "domains/page.html", domains=domains, errors={}, form={})

    @post("/domains", opt=CHANGE)
    async def add_domain(self, request: Req, data: Form) -> Response[Any]:
        return await _add(
            request,
            data,
            "domains",
            service.add_domain(actor(request), data.get("name", ""), data.get("comment", "")),
            _domains,
        )

    @post("/domains/{name:str}/delete", opt=CHANGE)
    async def delete_domain(self, request: Req, name: FromPath[str]) -> Response[Any]:
        try:
            await service.delete_domain(actor(request), name)
        except service.NotFound as exc:
            return _gone(request, exc, "domains/page.html", domains=await _domains(), form={})
        return done(request, "/domains")


class Routes(Controller):
    """Each sender domain's relay route."""

    @get("/routes")
    async def routes_page(
        self,
        request: Req,
        sort: FromQuery[str] = "",
        direction: listings.Direction = "",
        page_no: FromQuery[int] = 1,
    ) -> Template:
        domains = await _domains("/routes", sort, direction, page_no)
        return page(request, "routes/page.html", domains=domains)

    @get("/routes/{domain:str}")
    async def route_page(self, request: Req, domain: FromPath[str]) -> Template:
        return page(request, "routes/edit.html", errors={}, **await _route_form(domain))

    @post("/routes/{domain:str}", opt=CHANGE)
    async def save_route(self, request: Req, domain: FromPath[str], data: Form) -> Response[Any]:
        try:
            await service.set_route(
                actor(request),
                request.app.state.box,
                domain,
                host=data.get("host", ""),
                port=data.get("port", ""),
                tls_mode=data.get("tls_mode", ""),
                auth_user=data.get("auth_user", ""),
                auth_password=data.get("auth_password", ""),
                clear_password=data.get("clear_password") == "on",
            )
        except FieldErrors as exc:
            ctx = await _route_form(domain)
            # Show what was typed, never echo a password back.
            ctx["form"] = {k: v for k, v in data.items() if k != "auth_password"}
            return form_answer(request, "routes/edit.html", "routes/_form.html", exc.errors, **ctx)
        return done(request, "/routes")

    @post("/routes/{domain:str}/delete", opt=CHANGE)
    async def delete_route(self, request: Req, domain: FromPath[str]) -> Response[Any]:
        try:
            await service.delete_route(actor(request), domain)
        except service.NotFound as exc:
            return _gone(request, exc, "routes/page.html", domains=await _domains("/routes"))
        return done(request, "/routes")


class Networks(Controller):
    """The trusted networks."""

    @get("/networks")
    async def networks_page(
        self,
        request: Req,
        sort: FromQuery[str] = "",
        direction: listings.Direction = "",
        page_no: FromQuery[int] = 1,
    ) -> Template:
        networks = await _networks(sort, direction, page_no)
        return page(request, "networks/page.html", networks=networks, errors={}, form={})

    @post("/networks", opt=CHANGE)
    async def add_network(self, request: Req, data: Form) -> Response[Any]:
        return await _add(
            request,
            data,
            "networks",
            service.add_network(actor(request), data.get("cidr", ""), data.get("comment", "")),
            _networks,
        )

    @post("/networks/delete", opt=CHANGE)
    async def delete_network(self, request: Req, data: Form) -> Response[Any]:
        try:
            await service.delete_network(actor(request), data.get("cidr", ""))
        except service.NotFound as exc:
            return _gone(request, exc, "networks/page.html", networks=await _networks(), form={})
        return done(request, "/networks")
