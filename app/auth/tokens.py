"""API tokens: shown once at creation, stored as SHA-256, revocable, optionally limited to source
networks and to a lifetime."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Any

from app import audit
from app.db.tables import ApiToken
from app.messages import Message

# read: GET only; write: also changes the configuration and acts on the queue; cluster: the
# peer node (config pull with sealed secrets, queue-sync lock), never config changes.
KINDS = ("read", "write", "cluster")
PREFIX = "mrt_"
MAX_VALID_DAYS = 3650
MAX_NETWORKS = 32


class TokenError(ValueError):
    pass


class TokenRefused(TokenError):
    """A known token refused for how it is used; `name` is the token's, for the audit."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class TokenExpired(TokenRefused):
    """A known token past its expiry: refused like an unknown one (401), with its own message."""


class TokenSourceRefused(TokenRefused):
    """A valid token used from outside its allowed source networks (403)."""


@dataclass(frozen=True)
class TokenPrincipal:
    id: int
    name: str
    kind: str

    @property
    def actor(self) -> str:
        return actor_name(self.name)


def actor_name(name: str) -> str:
    """How the audit trail names a token (never confused with a user name)."""
    return f"token:{name}"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_networks(text: str) -> str:
    """Allowed source networks typed as CIDRs or addresses, separated by spaces, commas or
    lines: normalised to one space-separated string (empty: from anywhere)."""
    networks: list[str] = []
    for entry in text.replace(",", " ").split():
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise TokenError(
                Message(
                    "{entry} is not a network or address (like 198.51.100.0/24 or 2001:db8::1).",
                    entry=repr(entry),
                )
            ) from None
        try:
            ipaddress.ip_network(entry)
        except ValueError:
            raise TokenError(
                Message(
                    "{entry} has host bits set; did you mean {network}?",
                    entry=entry,
                    network=str(network),
                )
            ) from None
        if str(network) not in networks:
            networks.append(str(network))
    if len(networks) > MAX_NETWORKS:
        raise TokenError(
            Message("A token allows at most {count} source networks.", count=MAX_NETWORKS)
        )
    return " ".join(networks)


def parse_valid_days(text: str | int | None) -> dt.datetime | None:
    """A lifetime in whole days from now (empty: the token never expires)."""
    value = str(text if text is not None else "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_VALID_DAYS:
        raise TokenError(
            Message("The lifetime is a whole number of days from 1 to {most}.", most=MAX_VALID_DAYS)
        )
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=int(value))


async def create(
    name: str,
    kind: str,
    actor: str,
    source_ip: str = "",
    networks: str = "",
    valid_days: str | int | None = None,
) -> str:
    name = name.strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise TokenError(Message("A token name has 1-64 letters, digits, '-', '_' or '.'."))
    if kind not in KINDS:
        raise TokenError(Message("The token kind must be one of {kinds}.", kinds=", ".join(KINDS)))
    allowed = parse_networks(networks)
    expires_at = parse_valid_days(valid_days)
    if await ApiToken.exists().where(ApiToken.name == name):
        raise TokenError(Message("A token named {name} exists already.", name=name))
    token = PREFIX + secrets.token_urlsafe(32)
    async with ApiToken._meta.db.transaction():
        await ApiToken.insert(
            ApiToken(
                name=name,
                token_hash=_hash(token),
                kind=kind,
                created_by=actor,
                created_at=dt.datetime.now(dt.UTC),
                allowed_networks=allowed,
                expires_at=expires_at,
            )
        )
        await audit.record(
            actor,
            "token.create",
            name,
            source_ip,
            after={"kind": kind, "allowed_networks": allowed, "expires_at": expires_at},
        )
    return token


async def revoke(name: str, actor: str, source_ip: str = "") -> None:
    async with ApiToken._meta.db.transaction():
        rows = (
            await ApiToken.update({ApiToken.revoked: True})
            .where((ApiToken.name == name) & (ApiToken.revoked.eq(False)))
            .returning(ApiToken.id)
        )
        if not rows:
            raise TokenError(Message("There is no active token named {name}.", name=name))
        await audit.record(actor, "token.revoke", name, source_ip)


def _allowed_from(allowed: str, source_ip: str) -> bool:
    if not allowed:
        return True
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return False  # no address to check (e.g. a unix socket): not inside any network
    return any(address in ipaddress.ip_network(n) for n in allowed.split())


async def authenticate(token: str, source_ip: str = "") -> TokenPrincipal | None:
    """The token's caller, or None when the token is unknown or revoked. Raises TokenExpired
    or TokenSourceRefused for a known token used too late or from elsewhere; only an accepted
    use counts as the token's last use."""
    row = (
        await ApiToken.select(
            ApiToken.id,
            ApiToken.name,
            ApiToken.kind,
            ApiToken.allowed_networks,
            ApiToken.expires_at,
        )
        .where((ApiToken.token_hash == _hash(token)) & (ApiToken.revoked.eq(False)))
        .first()
    )
    if row is None:
        return None
    now = dt.datetime.now(dt.UTC)
    if row["expires_at"] is not None and row["expires_at"] <= now:
        raise TokenExpired(
            row["name"],
            f"The API token {row['name']} expired at {row['expires_at']:%Y-%m-%d %H:%M} UTC.",
        )
    if not _allowed_from(row["allowed_networks"], source_ip):
        raise TokenSourceRefused(
            row["name"],
            f"The API token {row['name']} may not be used from {source_ip or 'this address'}: "
            "it is limited to other source networks.",
        )
    await ApiToken.update(
        {ApiToken.last_used_at: now, ApiToken.last_used_ip: source_ip or None}
    ).where(ApiToken.id == row["id"])
    return TokenPrincipal(row["id"], row["name"], row["kind"])


async def list_tokens() -> list[dict[str, Any]]:
    rows = await ApiToken.select(
        ApiToken.name,
        ApiToken.kind,
        ApiToken.created_by,
        ApiToken.created_at,
        ApiToken.last_used_at,
        ApiToken.last_used_ip,
        ApiToken.allowed_networks,
        ApiToken.expires_at,
        ApiToken.revoked,
    ).order_by(ApiToken.name)
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        row["expired"] = row["expires_at"] is not None and row["expires_at"] <= now
    return rows
