"""API tokens: shown once at creation, stored as SHA-256, revocable."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from app import audit
from app.db.tables import ApiToken
from app.messages import Message

KINDS = ("read", "cluster")
PREFIX = "mrt_"


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class TokenPrincipal:
    id: int
    name: str
    kind: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create(name: str, kind: str, actor: str, source_ip: str = "") -> str:
    name = name.strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise TokenError(Message("A token name has 1-64 letters, digits, '-', '_' or '.'."))
    if kind not in KINDS:
        raise TokenError(Message("The token kind must be one of {kinds}.", kinds=", ".join(KINDS)))
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
            )
        )
        await audit.record(actor, "token.create", name, source_ip, after={"kind": kind})
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


async def authenticate(token: str) -> TokenPrincipal | None:
    row = (
        await ApiToken.select(ApiToken.id, ApiToken.name, ApiToken.kind)
        .where((ApiToken.token_hash == _hash(token)) & (ApiToken.revoked.eq(False)))
        .first()
    )
    if row is None:
        return None
    await ApiToken.update({ApiToken.last_used_at: dt.datetime.now(dt.UTC)}).where(
        ApiToken.id == row["id"]
    )
    return TokenPrincipal(row["id"], row["name"], row["kind"])


async def list_tokens() -> list[dict[str, Any]]:
    return await ApiToken.select(
        ApiToken.name,
        ApiToken.kind,
        ApiToken.created_by,
        ApiToken.created_at,
        ApiToken.last_used_at,
        ApiToken.revoked,
    ).order_by(ApiToken.name)
