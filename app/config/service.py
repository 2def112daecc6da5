"""Changing the relay configuration.

Every change runs in one transaction that writes the rows, the new config version (a full
snapshot) and the audit entry, so that no version ever misses a change and no change lacks its
version. Changes are serialised with an advisory lock, which keeps version numbers gap-free and
monotonic even when two operators save at the same moment.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from piccolo.columns import Column

from app import audit
from app.config import snapshot as snap
from app.config import validation
from app.config.validation import FieldErrors
from app.crypto import SecretBox
from app.db.tables import ConfigVersion, RelayRoute, SenderDomain, TrustedNetwork
from app.messages import Message

_CONFIG_LOCK = 0x6D61696C  # pg_advisory_xact_lock key for config changes ("mail")


class NotFound(LookupError):
    """Raised with a Message; str() is that Message, so the error page can translate it."""

    def __str__(self) -> str:
        first = self.args[0] if len(self.args) == 1 else None
        return first if isinstance(first, str) else super().__str__()


@dataclass(frozen=True)
class Actor:
    username: str
    source_ip: str = ""


async def _change(
    actor: Actor,
    action: str,
    target: str,
    mutate: Callable[[], Awaitable[Any]],
    comment: str = "",
    number_after: int = 0,
) -> int:
    """Apply `mutate` and record the resulting version and audit entry atomically."""
    async with ConfigVersion._meta.db.transaction():
        await ConfigVersion.raw("SELECT pg_advisory_xact_lock({})", _CONFIG_LOCK)
        before = await snap.current()
        await mutate()
        after = await snap.current()
        # The whole configuration must stay renderable: a change that breaks it (e.g. a second
        # TLS mode for one next hop) is refused and rolled back with the transaction.
        problems = snap.validate(after)
        if problems:
            raise FieldErrors({"form": "; ".join(problems)})
        number = await _store_version(
            after, actor.username, comment or f"{action} {target}", number_after
        )
        await audit.record(
            actor.username,
            action,
            target,
            actor.source_ip,
            before=_focus(before, target),
            after=_focus(after, target) | {"version": number},
        )
        return number


def _focus(snapshot: snap.Snapshot, target: str) -> dict[str, Any]:
    """The part of a snapshot a change is about, with secrets reduced to their fingerprints."""
    lines = [line for line in snap.describe(snapshot) if target and target in line.split(" ")[1]]
    return {"lines": lines}


async def _store_version(
    snapshot: snap.Snapshot, author: str, comment: str, number_after: int
) -> int:
    latest = (
        await ConfigVersion.select(ConfigVersion.number)
        .order_by(ConfigVersion.number, ascending=False)
        .first()
    )
    number = max(latest["number"] if latest else 0, number_after) + 1
    await ConfigVersion.insert(
        ConfigVersion(
            number=number,
            snapshot=snapshot,
            checksum=snap.checksum(snapshot),
            author=author,
            comment=validation.comment(comment[:500]),
            created_at=dt.datetime.now(dt.UTC),
        )
    )
    return number


async def _domain_id(name: str) -> int:
    row = await SenderDomain.select(SenderDomain.id).where(SenderDomain.name == name).first()
    if row is None:
        raise NotFound(Message("There is no sender domain {name}.", name=name))
    return int(row["id"])


async def add_domain(actor: Actor, name: str, comment: str = "") -> int:
    clean = validation.collect(
        {"name": (validation.domain_name, name), "comment": (validation.comment, comment)}
    )
    domain = str(clean["name"])

    async def mutate() -> None:
        # Checked under the config lock, so two simultaneous adds cannot both pass.
        if await SenderDomain.exists().where(SenderDomain.name == domain):
            raise FieldErrors(
                {"name": Message("The sender domain {name} exists already.", name=domain)}
            )
        await SenderDomain.insert(
            SenderDomain(name=domain, comment=clean["comment"], created_at=dt.datetime.now(dt.UTC))
        )

    return await _change(actor, "domain.add", domain, mutate)


async def set_domain_comment(actor: Actor, name: str, comment: str) -> int:
    clean = validation.collect({"comment": (validation.comment, comment)})
    domain_id = await _domain_id(name)

    async def mutate() -> None:
        await SenderDomain.update({SenderDomain.comment: clean["comment"]}).where(
            SenderDomain.id == domain_id
        )

    return await _change(actor, "domain.comment", name, mutate)


async def delete_domain(actor: Actor, name: str) -> int:
    domain_id = await _domain_id(name)

    async def mutate() -> None:
        await SenderDomain.delete().where(SenderDomain.id == domain_id)

    return await _change(actor, "domain.delete", name, mutate)


async def set_route(
    actor: Actor,
    box: SecretBox,
    domain: str,
    host: str,
    port: str | int,
    tls_mode: str,
    auth_user: str = "",
    auth_password: str = "",
    clear_password: bool = False,
) -> int:
    """Create or replace a sender domain's route. An empty password keeps the stored one, as
    long as the host, port and TLS mode stay: a password is stored for the relay it was typed
    for, and a route moved elsewhere (or to weaker TLS) needs it typed again."""
    clean = validation.collect(
        {
            "host": (validation.relay_host, host),
            "port": (validation.port, port),
            "tls_mode": (validation.tls_mode, tls_mode),
            "auth_user": (validation.auth_user, auth_user),
            "auth_password": (validation.auth_password, auth_password),
        }
    )
    domain_id = await _domain_id(domain)
    existing = await RelayRoute.select().where(RelayRoute.sender_domain == domain_id).first()
    moved = existing is not None and (
        (existing["host"], existing["port"], existing["tls_mode"])
        != (clean["host"], clean["port"], clean["tls_mode"])
    )
    stored = existing["auth_password_enc"] if existing else None
    password_enc = None if clear_password or moved else stored
    if clean["auth_password"]:
        password_enc = box.encrypt(str(clean["auth_password"]))
    user = str(clean["auth_user"]) or None
    if user and not password_enc:
        raise FieldErrors(
            {
                "auth_password": Message(
                    "The host, port or TLS mode changed, and the stored password is only for "
                    "the relay it was saved for: type the SMTP AUTH password again."
                )
                if moved and stored
                else Message("SMTP AUTH needs a password.")
            }
        )
    if not user:
        password_enc = None
    values: dict[Column | str, Any] = {
        RelayRoute.host: clean["host"],
        RelayRoute.port: clean["port"],
        RelayRoute.tls_mode: clean["tls_mode"],
        RelayRoute.auth_user: user,
        RelayRoute.auth_password_enc: password_enc,
    }

    async def mutate() -> None:
        # One next hop has one TLS policy (smtp_tls_policy_maps is keyed by it).
        clash = (
            await RelayRoute.select(RelayRoute.sender_domain.name, RelayRoute.tls_mode)
            .where(
                (RelayRoute.host == clean["host"])
                & (RelayRoute.port == clean["port"])
                & (RelayRoute.tls_mode != clean["tls_mode"])
                & (RelayRoute.sender_domain != domain_id)
            )
            .first()
        )
        if clash:
            raise FieldErrors(
                {
                    "tls_mode": Message(
                        "[{host}]:{port} already has TLS mode {mode} on the route for "
                        "{domain}; routes to one host and port must use the same TLS mode.",
                        host=clean["host"],
                        port=clean["port"],
                        mode=clash["tls_mode"],
                        domain=clash["sender_domain.name"],
                    )
                }
            )
        if existing:
            await RelayRoute.update(values).where(RelayRoute.id == existing["id"])
        else:
            await RelayRoute.insert(
                RelayRoute(
                    sender_domain=domain_id,
                    **{c._meta.name: v for c, v in values.items() if isinstance(c, Column)},
                )
            )

    return await _change(actor, "route.set", domain, mutate)


async def delete_route(actor: Actor, domain: str) -> int:
    domain_id = await _domain_id(domain)
    if not await RelayRoute.exists().where(RelayRoute.sender_domain == domain_id):
        raise NotFound(Message("The sender domain {name} has no route.", name=domain))

    async def mutate() -> None:
        await RelayRoute.delete().where(RelayRoute.sender_domain == domain_id)

    return await _change(actor, "route.delete", domain, mutate)


async def add_network(actor: Actor, cidr: str, comment: str = "") -> int:
    clean = validation.collect(
        {"cidr": (validation.cidr, cidr), "comment": (validation.comment, comment)}
    )
    network = str(clean["cidr"])

    async def mutate() -> None:
        if await TrustedNetwork.exists().where(TrustedNetwork.cidr == network):
            raise FieldErrors(
                {"cidr": Message("The network {network} is trusted already.", network=network)}
            )
        await TrustedNetwork.insert(TrustedNetwork(cidr=network, comment=clean["comment"]))

    return await _change(actor, "network.add", network, mutate)


async def set_network_comment(actor: Actor, cidr: str, comment: str) -> int:
    clean = validation.collect({"comment": (validation.comment, comment)})
    if not await TrustedNetwork.exists().where(TrustedNetwork.cidr == cidr):
        raise NotFound(Message("The network {network} is not trusted.", network=cidr))

    async def mutate() -> None:
        await TrustedNetwork.update({TrustedNetwork.comment: clean["comment"]}).where(
            TrustedNetwork.cidr == cidr
        )

    return await _change(actor, "network.comment", cidr, mutate)


async def delete_network(actor: Actor, cidr: str) -> int:
    if not await TrustedNetwork.exists().where(TrustedNetwork.cidr == cidr):
        raise NotFound(Message("The network {network} is not trusted.", network=cidr))

    async def mutate() -> None:
        await TrustedNetwork.delete().where(TrustedNetwork.cidr == cidr)

    return await _change(actor, "network.delete", cidr, mutate)


async def replace_all(
    actor: Actor, snapshot: snap.Snapshot, action: str, comment: str, number_after: int = 0
) -> int:
    """Make the live tables equal to `snapshot` (rollback, a version pulled from the master, an
    import). `number_after`: the new version's number is above it, so that a replacement master
    that imports the surviving slave's configuration numbers past what that slave runs (a slave
    applies only newer master versions)."""
    problems = snap.validate(snapshot)
    if problems:
        raise FieldErrors({"snapshot": "; ".join(problems)})

    async def mutate() -> None:
        await SenderDomain.delete(force=True)
        await TrustedNetwork.delete(force=True)
        now = dt.datetime.now(dt.UTC)
        for entry in snapshot["sender_domains"]:
            row = await SenderDomain.insert(
                SenderDomain(name=entry["name"], comment=entry.get("comment", ""), created_at=now)
            ).returning(SenderDomain.id)
            route = entry.get("route")
            if route:
                await RelayRoute.insert(
                    RelayRoute(
                        sender_domain=row[0]["id"],
                        host=route["host"],
                        port=route["port"],
                        tls_mode=route["tls_mode"],
                        auth_user=route.get("auth_user"),
                        auth_password_enc=route.get("auth_password_enc"),
                    )
                )
        for entry in snapshot["trusted_networks"]:
            await TrustedNetwork.insert(
                TrustedNetwork(cidr=entry["cidr"], comment=entry.get("comment", ""))
            )

    return await _change(actor, action, "*", mutate, comment, number_after)


async def rollback(actor: Actor, number: int) -> int:
    version = await get_version(number)
    return await replace_all(
        actor, version["snapshot"], "config.rollback", f"Rollback to version {number}"
    )


async def get_version(number: int) -> dict[str, Any]:
    row = (
        await ConfigVersion.select()
        .where(ConfigVersion.number == number)
        .output(load_json=True)
        .first()
    )
    return _found(number, row)


async def version_checksum(number: int) -> str:
    """The version's checksum alone: at 100,000 sender domains its snapshot is 16 MB of JSON."""
    row = (
        await ConfigVersion.select(ConfigVersion.checksum)
        .where(ConfigVersion.number == number)
        .first()
    )
    return str(_found(number, row)["checksum"])


def _found(number: int, row: dict[str, Any] | None) -> dict[str, Any]:
    if row is None:
        raise NotFound(Message("There is no config version {number}.", number=number))
    return row


async def latest_version() -> dict[str, Any] | None:
    return (
        await ConfigVersion.select()
        .order_by(ConfigVersion.number, ascending=False)
        .output(load_json=True)
        .first()
    )


async def newest_listed() -> dict[str, Any] | None:
    """The newest version as list_versions shows it (without its snapshot); None when none."""
    versions = await list_versions(1)
    return versions[0] if versions else None


async def list_versions(limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    return (
        await ConfigVersion.select(
            ConfigVersion.number,
            ConfigVersion.author,
            ConfigVersion.comment,
            ConfigVersion.created_at,
            ConfigVersion.checksum,
        )
        .order_by(ConfigVersion.number, ascending=False)
        .limit(limit)
        .offset(offset)
    )
