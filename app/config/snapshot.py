"""A config version's snapshot: the whole relay configuration as one canonical document.

Snapshots are what versions store, what the export ships and what the renderer reads. Secrets stay
ciphertext inside them; `describe` shows only whether a password is set and a short fingerprint, so
a diff reveals that it changed and nothing more.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import itertools
import json
import operator
from dataclasses import dataclass, field
from typing import Any

from app.config import validation
from app.db.tables import RelayRoute, SenderDomain, TrustedNetwork
from app.messages import Message, message_of

Snapshot = dict[str, Any]


def empty() -> Snapshot:
    return {"sender_domains": [], "trusted_networks": []}


async def current() -> Snapshot:
    """Read the live configuration tables into a snapshot (call inside the change's transaction)."""
    domains = await SenderDomain.select().order_by(SenderDomain.name)
    routes = {r["sender_domain"]: r for r in await RelayRoute.select()}
    networks = await TrustedNetwork.select().order_by(TrustedNetwork.cidr)
    return {
        "sender_domains": [
            {
                "name": d["name"],
                "comment": d["comment"],
                "route": _route(routes.get(d["id"])),
            }
            for d in domains
        ],
        "trusted_networks": [{"cidr": n["cidr"], "comment": n["comment"]} for n in networks],
    }


def _route(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "host": row["host"],
        "port": row["port"],
        "tls_mode": row["tls_mode"],
        "auth_user": row["auth_user"],
        "auth_password_enc": row["auth_password_enc"],
    }


def canonical(snapshot: Snapshot) -> bytes:
    return json.dumps(snapshot, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def checksum(snapshot: Snapshot) -> str:
    return hashlib.sha256(canonical(snapshot)).hexdigest()


@dataclass
class CheckedDomains:
    """The sender domains that passed, in the snapshot's order, as the checks found them: each
    one's name, its route as stored (None: no route) and that route's host, port and TLS mode
    (None with it). Three lists rather than a tuple per domain: 100,000 new tuples wake the
    garbage collector, which then walks the whole snapshot, a fifth of a render."""

    names: list[str] = field(default_factory=list)
    routes: list[dict[str, Any] | None] = field(default_factory=list)
    relays: list[tuple[str, int, str] | None] = field(default_factory=list)

    def by_name(self) -> CheckedDomains:
        """These domains in the order of their names. A stored snapshot has them so: that is
        one comparison a name to see, a quarter of the sort (and the lists' reordering)."""
        names = self.names
        if all(map(operator.lt, names, itertools.islice(names, 1, None))):
            return self
        order = sorted(range(len(names)), key=names.__getitem__)
        return CheckedDomains(
            [names[i] for i in order],
            [self.routes[i] for i in order],
            [self.relays[i] for i in order],
        )


def validate(snapshot: Snapshot) -> list[str]:
    """Every problem in a snapshot (e.g. one received from the master), as operator-facing text.

    The same rules as the forms: a snapshot that passes cannot inject anything into a map.
    """
    return checked(snapshot)[0]


def checked(snapshot: Snapshot) -> tuple[list[str], CheckedDomains]:
    """validate(snapshot), and each sender domain with what its checks found, in the
    snapshot's order (all of them when there is no problem; otherwise use none): the renderer
    writes those, rather than read each entry again (at 100,000 sender domains a pass over the
    entries is a tenth of a second)."""
    problems: list[str] = []
    passed = CheckedDomains()
    seen_domains: set[str] = set()
    nexthop_tls: dict[tuple[str, int], tuple[str, str]] = {}
    try:
        domains = list(snapshot["sender_domains"])
        networks = list(snapshot["trusted_networks"])
    except (KeyError, TypeError):
        return [Message("The snapshot lacks sender_domains or trusted_networks.")], passed
    # Routes repeat (many sender domains, a few relays): each distinct one is checked once.
    checked_routes: dict[tuple[str, int, str, str | None], tuple[str, int, str]] = {}
    is_normal_domain = validation.is_normal_domain
    add_name, add_route, add_relay = passed.names.append, passed.routes.append, passed.relays.append
    for entry in domains:
        name = str(entry.get("name", ""))
        try:
            if not is_normal_domain(name) and validation.domain_name(name) != name:
                problems.append(
                    Message("sender domain {name}: not in normalised form", name=repr(name))
                )
            # Whatever is falsy reads as a valid comment ("", "0", "None").
            if entry.get("comment"):
                validation.comment(str(entry["comment"]))
        except ValueError as exc:
            problems.append(
                Message("sender domain {name}: {problem}", name=repr(name), problem=message_of(exc))
            )
            continue
        if name in seen_domains:
            problems.append(Message("sender domain {name}: listed twice", name=name))
        seen_domains.add(name)
        route = entry.get("route")
        if route is None:
            add_name(name)
            add_route(None)
            add_relay(None)
            continue
        try:
            relay = _checked_route(route, checked_routes)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(
                Message("route for {name}: {problem}", name=name, problem=message_of(exc))
            )
            continue
        if route.get("auth_user") and not (
            route.get("auth_password_enc") or route.get("auth_password_sealed")
        ):
            problems.append(
                Message("route for {name}: SMTP AUTH user without a password", name=name)
            )
        add_name(name)
        add_route(route)
        add_relay(relay)
        # smtp_tls_policy_maps is keyed by next hop: two routes to one host must agree on TLS.
        host, port, tls = relay
        other = nexthop_tls.setdefault((host, port), (tls, name))
        if other[0] != tls:
            problems.append(
                Message(
                    "route for {name}: [{host}]:{port} uses TLS {tls}, but the route for "
                    "{other} uses {other_tls} for the same host and port",
                    name=name,
                    host=host,
                    port=port,
                    tls=tls,
                    other=other[1],
                    other_tls=other[0],
                )
            )
    seen_networks: set[str] = set()
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in networks:
        value = str(entry.get("cidr", ""))
        try:
            normal = validation.cidr(value)
            if normal != value:
                problems.append(
                    Message("trusted network {cidr}: not in normalised form", cidr=repr(value))
                )
            elif value not in seen_networks:
                trusted.append(ipaddress.ip_network(normal))
            validation.comment(str(entry.get("comment", "")))
        except ValueError as exc:
            problems.append(
                Message(
                    "trusted network {cidr}: {problem}", cidr=repr(value), problem=message_of(exc)
                )
            )
        if value in seen_networks:
            problems.append(Message("trusted network {cidr}: listed twice", cidr=value))
        seen_networks.add(value)
    try:
        validation.trusted_together(trusted)
    except ValueError as exc:
        problems.append(message_of(exc))
    return problems, passed


def _checked_route(
    route: dict[str, Any], checked: dict[tuple[str, int, str, str | None], tuple[str, int, str]]
) -> tuple[str, int, str]:
    """_canonical_route(route), from `checked` when a route of the same plain values passed
    before (exact types: True is not the port 1, nor a str subclass a host)."""
    try:
        host, port, tls = route["host"], route["port"], route["tls_mode"]
        user = route.get("auth_user")
    except (AttributeError, KeyError, TypeError):
        return _canonical_route(route)
    if not (type(host) is str and type(port) is int and type(tls) is str) or not (
        user is None or type(user) is str
    ):
        return _canonical_route(route)
    key = (host, port, tls, user)
    known = checked.get(key)
    if known is None:
        known = checked[key] = _canonical_route(route)
    return known


def _canonical_route(route: dict[str, Any]) -> tuple[str, int, str]:
    """The route's host, port and TLS mode, refusing any value not stored in canonical form:
    the renderer writes stored values as they are."""
    host, port, tls = route["host"], route["port"], route["tls_mode"]
    if not isinstance(host, str) or validation.relay_host(host) != host:
        raise ValueError(Message("relay host {host} is not in normalised form", host=repr(host)))
    if not isinstance(port, int) or isinstance(port, bool) or validation.port(port) != port:
        raise ValueError(
            Message("port {port} is not a number between 1 and 65535", port=repr(port))
        )
    if not isinstance(tls, str) or validation.tls_mode(tls) != tls:
        raise ValueError(
            Message(
                "TLS mode {tls} is not one of {modes}",
                tls=repr(tls),
                modes=", ".join(validation.TLS_MODES),
            )
        )
    user = route.get("auth_user")
    if user is not None and (not isinstance(user, str) or validation.auth_user(user) != user):
        raise ValueError(Message("SMTP AUTH user {user} is not valid", user=repr(user)))
    return host, port, tls


def _secret_mark(route: dict[str, Any]) -> str:
    secret = route.get("auth_password_enc") or route.get("auth_password_sealed")
    if not secret:
        return "-"
    return "set#" + hashlib.sha256(str(secret).encode()).hexdigest()[:8]


def describe(snapshot: Snapshot) -> list[str]:
    """One line per setting, stable order: what a version diff compares."""
    lines: list[str] = []
    for entry in snapshot.get("sender_domains", []):
        note = f"  # {entry['comment']}" if entry.get("comment") else ""
        lines.append(f"sender-domain {entry['name']}{note}")
        route = entry.get("route")
        if route:
            auth = (
                f" auth={route['auth_user']} password={_secret_mark(route)}"
                if route.get("auth_user")
                else ""
            )
            lines.append(
                f"route {entry['name']} -> [{route['host']}]:{route['port']} "
                f"tls={route['tls_mode']}{auth}"
            )
    for entry in snapshot.get("trusted_networks", []):
        note = f"  # {entry['comment']}" if entry.get("comment") else ""
        lines.append(f"trusted-network {entry['cidr']}{note}")
    return lines


@dataclass(frozen=True)
class DiffRow:
    kind: str  # same | changed | added | removed
    left: str
    right: str


def side_by_side(old: Snapshot, new: Snapshot) -> list[DiffRow]:
    a, b = describe(old), describe(new)
    rows: list[DiffRow] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            rows.extend(
                DiffRow("same", a[i], b[j])
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
            )
        elif tag == "delete":
            rows.extend(DiffRow("removed", a[i], "") for i in range(i1, i2))
        elif tag == "insert":
            rows.extend(DiffRow("added", "", b[j]) for j in range(j1, j2))
        else:
            left, right = a[i1:i2], b[j1:j2]
            for k in range(max(len(left), len(right))):
                rows.append(
                    DiffRow(
                        "changed",
                        left[k] if k < len(left) else "",
                        right[k] if k < len(right) else "",
                    )
                )
    return rows
