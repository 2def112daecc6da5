"""The automation API under /api/v1: sender domains, routes, trusted networks, Test and Apply,
config versions and queue actions for scripts, through the services, validation and audit the GUI
uses.

Tokens of every kind may GET; only `write` tokens may change anything. A change answers with the
config version it made (`changed` false, and no new version, when a PUT found everything as
asked). A route's password is write-only: answers say only "set" or "not set".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Request, Router, delete, get, post, put
from litestar.exceptions import ClientException
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Response
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from app.agent.client import AgentRefused, AgentUnavailable
from app.auth.tokens import TokenPrincipal
from app.config import applied, service, validation
from app.config import snapshot as snap
from app.config.validation import FieldErrors
from app.db.tables import RelayRoute, SenderDomain, TrustedNetwork
from app.messages import Message
from app.postfix import pipeline
from app.postfix import queue as postfix_queue
from app.replication import reconcile
from app.web.auth import source_ip
from app.web.controllers import queue as queue_screen
from app.web.controllers.api import MAX_BODY_BYTES
from app.web.controllers.versions import _latest_number

Req = Request[TokenPrincipal, Any, Any]
READ = {"api": "read"}
WRITE = {"api": "write"}
# Changes the configuration: refused on the slave, as the GUI's forms are.
CHANGE = {"api": "write", "master_only": True}
SET, NOT_SET = "set", "not set"


def _actor(request: Req) -> service.Actor:
    return service.Actor(request.user.actor, source_ip(request))


def _field_errors(request: Request[Any, Any, Any], exc: FieldErrors) -> Response[Any]:
    """The GUI's inline messages, as one detail line and per field."""
    return Response(
        {
            "status_code": HTTP_422_UNPROCESSABLE_ENTITY,
            "detail": " ".join(exc.errors.values()),
            "errors": exc.errors,
        },
        status_code=HTTP_422_UNPROCESSABLE_ENTITY,
    )


def _check(what: str, check: Any, value: Any) -> Any:
    """One value through its validator, failing as the service would (422, field named)."""
    try:
        return check(value)
    except ValueError as exc:
        raise FieldErrors({what: str(exc)}) from None


@dataclass
class Change:
    """What a change did: `config_version` is the version it made, or the newest one when
    `changed` is false (a PUT that found everything as asked makes no version)."""

    changed: bool
    config_version: int


async def _unchanged() -> Change:
    latest = await service.latest_version()
    return Change(False, int(latest["number"]) if latest else 0)


async def _put_comment(
    request: Req,
    key: str,
    stored: str | None,
    comment: str,
    add: Callable[[service.Actor, str, str], Awaitable[int]],
    set_comment: Callable[[service.Actor, str, str], Awaitable[int]],
) -> tuple[Change, int]:
    """PUT of a domain or network (`stored`: its comment, None when it does not exist): add
    it (201), set a different comment (200), or change nothing (200, no version)."""
    if stored is None:
        return Change(True, await add(_actor(request), key, comment)), HTTP_201_CREATED
    if stored == _check("comment", validation.comment, comment):
        return await _unchanged(), HTTP_200_OK
    return Change(True, await set_comment(_actor(request), key, comment)), HTTP_200_OK


# Sender domains ------------------------------------------------------------------------------


@dataclass
class RouteOut:
    sender_domain: str
    host: str
    port: int
    tls_mode: str
    auth_user: str
    auth_password: str  # "set" or "not set": the password itself is never returned


@dataclass
class DomainOut:
    name: str
    comment: str
    route: RouteOut | None


@dataclass
class DomainIn:
    name: str
    comment: str = ""


@dataclass
class CommentIn:
    comment: str = ""


@dataclass
class DomainChange(Change):
    sender_domain: DomainOut


def _route_out(domain: str, row: dict[str, Any]) -> RouteOut:
    return RouteOut(
        sender_domain=domain,
        host=row["host"],
        port=row["port"],
        tls_mode=row["tls_mode"],
        auth_user=row["auth_user"] or "",
        auth_password=SET if row["auth_password_enc"] else NOT_SET,
    )


async def _domains(name: str | None = None) -> list[DomainOut]:
    query = SenderDomain.select().order_by(SenderDomain.name)
    if name is not None:
        query = query.where(SenderDomain.name == name)
    routes = {r["sender_domain"]: r for r in await RelayRoute.select()}
    return [
        DomainOut(
            d["name"],
            d["comment"],
            _route_out(d["name"], routes[d["id"]]) if d["id"] in routes else None,
        )
        for d in await query
    ]


async def _domain(name: str) -> DomainOut:
    found = await _domains(name)
    if not found:
        raise service.NotFound(Message("There is no sender domain {name}.", name=name))
    return found[0]


DOMAIN_EXAMPLE = Body(
    examples=[Example(summary="A sender domain", value={"name": "example.com", "comment": "CRM"})]
)
COMMENT_EXAMPLE = Body(
    examples=[Example(summary="The domain's or network's comment", value={"comment": "CRM"})]
)


class SenderDomains(Controller):
    path = "/sender-domains"
    tags = ("sender domains",)

    @get("/", opt=READ)
    async def list_domains(self) -> list[DomainOut]:
        return await _domains()

    @get("/{name:str}", opt=READ)
    async def get_domain(self, name: FromPath[str]) -> DomainOut:
        return await _domain(name)

    @post("/", opt=CHANGE)
    async def create_domain(
        self, request: Req, data: Annotated[DomainIn, DOMAIN_EXAMPLE]
    ) -> Response[DomainChange]:
        """Add a sender domain (422 when it exists already)."""
        number = await service.add_domain(_actor(request), data.name, data.comment)
        out = await _domain(_check("name", validation.domain_name, data.name))
        return Response(
            DomainChange(True, number, out),
            status_code=HTTP_201_CREATED,
            headers={"Location": f"/api/v1/sender-domains/{out.name}"},
        )

    @put("/{name:str}", opt=CHANGE)
    async def put_domain(
        self, request: Req, name: FromPath[str], data: Annotated[CommentIn, COMMENT_EXAMPLE]
    ) -> Response[DomainChange]:
        """Create the domain, or set its comment; repeating it changes nothing."""
        domain = _check("name", validation.domain_name, name)
        row = await SenderDomain.select().where(SenderDomain.name == domain).first()
        change, status = await _put_comment(
            request,
            domain,
            None if row is None else row["comment"],
            data.comment,
            service.add_domain,
            service.set_domain_comment,
        )
        out = DomainChange(**vars(change), sender_domain=await _domain(domain))
        return Response(out, status_code=status)

    @delete("/{name:str}", opt=CHANGE, status_code=HTTP_200_OK)
    async def delete_domain(self, request: Req, name: FromPath[str]) -> Change:
        """Delete the domain and its route (404 when there is no such domain)."""
        return Change(True, await service.delete_domain(_actor(request), name))


# Routes ----------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RouteIn:
    """`auth_password` is write-only; left empty it keeps the stored one while host, port and
    TLS mode stay (as the GUI's form does); `clear_password` removes it."""

    host: str
    port: int = 25
    tls_mode: str = "may"
    auth_user: str = ""
    auth_password: str = ""
    clear_password: bool = False


@dataclass(kw_only=True)
class NewRouteIn(RouteIn):
    sender_domain: str


@dataclass
class RouteChange(Change):
    route: RouteOut


ROUTE = {
    "host": "smtp.example.net",
    "port": 587,
    "tls_mode": "encrypt",
    "auth_user": "relay",
    "auth_password": "s3cret-Relay-pass",
}
NEW_ROUTE_EXAMPLE = Body(
    examples=[
        Example(summary="A route with SMTP AUTH", value={"sender_domain": "example.com", **ROUTE})
    ]
)
ROUTE_EXAMPLE = Body(
    examples=[
        Example(summary="A route with SMTP AUTH", value=ROUTE),
        Example(
            summary="A route without SMTP AUTH",
            value={"host": "mx.example.net", "port": 25, "tls_mode": "may"},
        ),
    ]
)


async def _route(domain: str) -> RouteOut:
    out = await _domain(domain)
    if out.route is None:
        raise service.NotFound(Message("The sender domain {name} has no route.", name=domain))
    return out.route


async def _route_row(domain: str) -> dict[str, Any] | None:
    return await RelayRoute.select().where(RelayRoute.sender_domain.name == domain).first()


def _same_route(request: Req, row: dict[str, Any], data: RouteIn) -> bool:
    """Whether saving `data` would store what `row` holds (then a PUT makes no version)."""
    try:
        wanted = (
            validation.relay_host(data.host),
            validation.port(data.port),
            validation.tls_mode(data.tls_mode),
            validation.auth_user(data.auth_user) or None,
        )
    except ValueError:
        return False  # the service refuses it, with the GUI's message
    if data.clear_password or wanted != (
        row["host"],
        row["port"],
        row["tls_mode"],
        row["auth_user"],
    ):
        return False
    if not data.auth_password:
        return True
    stored = row["auth_password_enc"]
    return bool(stored) and request.app.state.box.decrypt(stored) == data.auth_password


async def _set_route(request: Req, domain: str, data: RouteIn) -> int:
    return await service.set_route(
        _actor(request),
        request.app.state.box,
        domain,
        host=data.host,
        port=data.port,
        tls_mode=data.tls_mode,
        auth_user=data.auth_user,
        auth_password=data.auth_password,
        clear_password=data.clear_password,
    )


class Routes(Controller):
    path = "/routes"
    tags = ("routes",)

    @get("/", opt=READ)
    async def list_routes(self) -> list[RouteOut]:
        return [d.route for d in await _domains() if d.route is not None]

    @get("/{domain:str}", opt=READ)
    async def get_route(self, domain: FromPath[str]) -> RouteOut:
        return await _route(domain)

    @post("/", opt=CHANGE)
    async def create_route(
        self, request: Req, data: Annotated[NewRouteIn, NEW_ROUTE_EXAMPLE]
    ) -> Response[RouteChange]:
        """Give a sender domain its route (409 when it has one: replace it with PUT)."""
        await _domain(data.sender_domain)
        if await _route_row(data.sender_domain) is not None:
            raise ClientException(
                f"The sender domain {data.sender_domain} has a route already: replace it with PUT.",
                status_code=HTTP_409_CONFLICT,
            )
        number = await _set_route(request, data.sender_domain, data)
        return Response(
            RouteChange(True, number, await _route(data.sender_domain)),
            status_code=HTTP_201_CREATED,
            headers={"Location": f"/api/v1/routes/{data.sender_domain}"},
        )

    @put("/{domain:str}", opt=CHANGE)
    async def put_route(
        self, request: Req, domain: FromPath[str], data: Annotated[RouteIn, ROUTE_EXAMPLE]
    ) -> Response[RouteChange]:
        """Create or replace the sender domain's route; repeating it changes nothing."""
        await _domain(domain)
        row = await _route_row(domain)
        if row is not None and _same_route(request, row, data):
            return Response(RouteChange(**vars(await _unchanged()), route=await _route(domain)))
        number = await _set_route(request, domain, data)
        status = HTTP_201_CREATED if row is None else HTTP_200_OK
        return Response(RouteChange(True, number, await _route(domain)), status_code=status)

    @delete("/{domain:str}", opt=CHANGE, status_code=HTTP_200_OK)
    async def delete_route(self, request: Req, domain: FromPath[str]) -> Change:
        """Delete the route (404 when the domain has none)."""
        return Change(True, await service.delete_route(_actor(request), domain))


# Trusted networks ------------------------------------------------------------------------------


@dataclass
class NetworkOut:
    cidr: str
    comment: str


@dataclass
class NetworkIn:
    cidr: str
    comment: str = ""


@dataclass
class NetworkChange(Change):
    trusted_network: NetworkOut


NETWORK_EXAMPLE = Body(
    examples=[
        Example(summary="A trusted network", value={"cidr": "198.51.100.0/24", "comment": "app"})
    ]
)


async def _network(cidr: str) -> NetworkOut:
    row = await TrustedNetwork.select().where(TrustedNetwork.cidr == cidr).first()
    if row is None:
        raise service.NotFound(Message("The network {network} is not trusted.", network=cidr))
    return NetworkOut(row["cidr"], row["comment"])


class TrustedNetworks(Controller):
    """A network's path is its CIDR as it is, slash included: /trusted-networks/10.1.0.0/16."""

    path = "/trusted-networks"
    tags = ("trusted networks",)

    @get("/", opt=READ)
    async def list_networks(self) -> list[NetworkOut]:
        rows = await TrustedNetwork.select().order_by(TrustedNetwork.cidr)
        return [NetworkOut(r["cidr"], r["comment"]) for r in rows]

    @get("/{cidr:path}", opt=READ)
    async def get_network(self, cidr: FromPath[str]) -> NetworkOut:
        return await _network(cidr.lstrip("/"))

    @post("/", opt=CHANGE)
    async def create_network(
        self, request: Req, data: Annotated[NetworkIn, NETWORK_EXAMPLE]
    ) -> Response[NetworkChange]:
        """Trust a network (422 when it is trusted already)."""
        number = await service.add_network(_actor(request), data.cidr, data.comment)
        out = await _network(_check("cidr", validation.cidr, data.cidr))
        return Response(
            NetworkChange(True, number, out),
            status_code=HTTP_201_CREATED,
            headers={"Location": f"/api/v1/trusted-networks/{out.cidr}"},
        )

    @put("/{cidr:path}", opt=CHANGE)
    async def put_network(
        self, request: Req, cidr: FromPath[str], data: Annotated[CommentIn, COMMENT_EXAMPLE]
    ) -> Response[NetworkChange]:
        """Trust the network, or set its comment; repeating it changes nothing."""
        network = _check("cidr", validation.cidr, cidr.lstrip("/"))
        row = await TrustedNetwork.select().where(TrustedNetwork.cidr == network).first()
        change, status = await _put_comment(
            request,
            network,
            None if row is None else row["comment"],
            data.comment,
            service.add_network,
            service.set_network_comment,
        )
        out = NetworkChange(**vars(change), trusted_network=await _network(network))
        return Response(out, status_code=status)

    @delete("/{cidr:path}", opt=CHANGE, status_code=HTTP_200_OK)
    async def delete_network(self, request: Req, cidr: FromPath[str]) -> Change:
        """Stop trusting the network (404 when it is not trusted)."""
        return Change(True, await service.delete_network(_actor(request), cidr.lstrip("/")))


# Test, Apply and config versions ----------------------------------------------------------------


@dataclass
class Report:
    """Test configuration / Apply changes: `problems` empty means it passed; `notes` say what
    could not be checked; `diff` is against the maps this node's Postfix runs."""

    version: int
    ok: bool
    applied: bool
    problems: list[str]
    notes: list[str]
    diff: str


def _report(report: pipeline.TestReport, applied_now: bool) -> Response[Report]:
    status = HTTP_200_OK
    if report.agent_unavailable:
        status = HTTP_503_SERVICE_UNAVAILABLE
    elif not report.ok:
        status = HTTP_422_UNPROCESSABLE_ENTITY
    # The API speaks English: plain texts (a Message is a str subclass the encoder refuses).
    problems, notes = [str(p) for p in report.problems], [str(n) for n in report.notes]
    body = Report(report.version, report.ok, applied_now, problems, notes, report.diff)
    return Response(body, status_code=status)


@dataclass
class VersionOut:
    number: int
    author: str
    comment: str
    created_at: dt.datetime
    checksum: str


@dataclass
class VersionList:
    applied_here: int | None  # the version this node's Postfix runs (None: nothing applied)
    versions: list[VersionOut]


@dataclass
class VersionDetail(VersionOut):
    lines: list[str]  # one line per setting; a password shows only as set#fingerprint


@dataclass
class DiffRowOut:
    kind: str  # same | changed | added | removed
    left: str
    right: str


@dataclass
class VersionDiff:
    a: int
    b: int
    rows: list[DiffRowOut]


def _version_out(row: dict[str, Any]) -> VersionOut:
    return VersionOut(
        row["number"], row["author"], row["comment"], row["created_at"], row["checksum"]
    )


class Config(Controller):
    path = "/"
    tags = ("test, apply and versions",)

    @post("/config/test", opt=WRITE, status_code=HTTP_200_OK)
    async def test_config(self, request: Req) -> Response[Report]:
        """Test the newest version against Postfix (422 with problems when it fails)."""
        state = request.app.state
        report = await pipeline.test_version(
            await _latest_number(), state.box, state.agent, state.settings.node_id
        )
        return _report(report, applied_now=False)

    @post("/config/apply", opt=WRITE, status_code=HTTP_200_OK)
    async def apply_config(self, request: Req) -> Response[Report]:
        """Apply the newest version to this node's Postfix (422 with problems, 503 when the
        agent is not reachable; the previous maps stay live either way)."""
        state = request.app.state
        report = await pipeline.apply_version(
            await _latest_number(),
            state.box,
            state.agent,
            state.settings.node_id,
            _actor(request),
        )
        return _report(report, applied_now=report.ok)

    @get("/versions", opt=READ)
    async def list_versions(
        self, request: Req, limit: FromQuery[int] = 50, offset: FromQuery[int] = 0
    ) -> VersionList:
        rows = await service.list_versions(min(max(limit, 1), 500), max(offset, 0))
        return VersionList(
            await applied.number_of(request.app.state.settings.node_id) or None,
            [_version_out(r) for r in rows],
        )

    @get("/versions/{number:int}", opt=READ)
    async def get_version(self, number: FromPath[int]) -> VersionDetail:
        row = await service.get_version(number)
        return VersionDetail(
            **dataclasses.asdict(_version_out(row)), lines=snap.describe(row["snapshot"])
        )

    @get("/versions/diff", opt=READ)
    async def diff_versions(self, a: FromQuery[int], b: FromQuery[int]) -> VersionDiff:
        """The settings that differ between two versions (in either order), as the GUI shows."""
        old, new = await service.get_version(min(a, b)), await service.get_version(max(a, b))
        rows = snap.side_by_side(old["snapshot"], new["snapshot"])
        return VersionDiff(
            old["number"], new["number"], [DiffRowOut(r.kind, r.left, r.right) for r in rows]
        )

    @post("/versions/{number:int}/rollback", opt=CHANGE)
    async def rollback(self, request: Req, number: FromPath[int]) -> Change:
        """Make a new version equal to version `number` (apply it afterwards)."""
        return Change(True, await service.rollback(_actor(request), number))


# Queue -----------------------------------------------------------------------------------------


@dataclass
class QueueList:
    total: int  # messages in the queue (listed up to `limit`)
    limit: int
    entries: list[postfix_queue.QueueEntry]


@dataclass
class QueueDone:
    action: str
    target: str  # a queue ID, or "*" for the whole queue
    count: int | None = None  # release-held: how many messages were released


def _agent_failed(detail: str, status: int = HTTP_503_SERVICE_UNAVAILABLE) -> Response[Any]:
    """As the queue page answers: 409 when the agent refused, 503 when it is not reachable."""
    return Response({"status_code": status, "detail": str(detail)}, status_code=status)


class Queue(Controller):
    path = "/queue"
    tags = ("queue",)

    @get("/", opt=READ)
    async def list_queue(
        self,
        request: Req,
        sender: FromQuery[str] = "",
        recipient: FromQuery[str] = "",
        queue_name: FromQuery[str] = "",
        reason: FromQuery[str] = "",
    ) -> Response[QueueList]:
        """What Postfix holds, filtered as on the queue page (substrings; queue_name exact)."""
        shown, total, error = await queue_screen.listing(
            request.app.state.agent, sender, recipient, queue_name, reason
        )
        if error is not None:
            return _agent_failed(error)
        return Response(QueueList(total, queue_screen.LIST_LIMIT, shown))

    @post("/flush", opt=WRITE, status_code=HTTP_200_OK)
    async def flush_queue(self, request: Req) -> Response[QueueDone]:
        """Try to deliver every queued message now."""
        return await _queue_action(request, "flush", None)

    @post("/release-held", opt=WRITE, status_code=HTTP_200_OK)
    async def release_held(self, request: Req) -> Response[QueueDone]:
        """Release the mail held after a return when the peer could not be asked."""
        actor = _actor(request)
        try:
            count = await reconcile.release_held(
                request.app.state.settings, request.app.state.agent, actor.username, actor.source_ip
            )
        except (AgentUnavailable, AgentRefused) as exc:
            return _agent_failed(str(exc))
        return Response(QueueDone("release_held", "*", count))

    @post("/{queue_id:str}/{action:str}", opt=WRITE, status_code=HTTP_200_OK)
    async def message_action(
        self, request: Req, queue_id: FromPath[str], action: FromPath[str]
    ) -> Response[QueueDone]:
        """hold, release, delete, requeue or flush one message."""
        if action not in postfix_queue.ACTIONS:
            raise service.NotFound(
                Message(
                    "There is no queue action {action}: one of {actions}.",
                    action=action,
                    actions=", ".join(postfix_queue.ACTIONS),
                )
            )
        return await _queue_action(request, action, queue_id)


async def _queue_action(request: Req, action: str, queue_id: str | None) -> Response[QueueDone]:
    try:
        await queue_screen.run_action(request.app.state.agent, _actor(request), action, queue_id)
    except AgentRefused as exc:
        return _agent_failed(str(exc), HTTP_409_CONFLICT)
    except AgentUnavailable as exc:
        return _agent_failed(str(exc))
    return Response(QueueDone(action, queue_id or "*"))


router = Router(
    path="/api/v1",
    route_handlers=[SenderDomains, Routes, TrustedNetworks, Config, Queue],
    exception_handlers={FieldErrors: _field_errors},
    request_max_body_size=MAX_BODY_BYTES,
)
