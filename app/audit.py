"""The audit trail: one row per security-relevant action, written in the caller's transaction."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from app.db.tables import AuditLog

TARGET_LENGTH = 1000  # a target is Text; a longer one is cut too, to keep the trail readable
CUT = "…"  # marks a value that was cut to fit


async def record(
    actor: str,
    action: str,
    target: str = "",
    source_ip: str = "",
    outcome: str = "ok",
    before: Any = None,
    after: Any = None,
) -> None:
    await AuditLog.insert(
        AuditLog(
            at=dt.datetime.now(dt.UTC),
            actor=_fit(actor, AuditLog.actor.length),
            action=_fit(action, AuditLog.action.length),
            target=_fit(target, TARGET_LENGTH),
            source_ip=_fit(source_ip, AuditLog.source_ip.length),
            outcome=_fit(outcome, AuditLog.outcome.length),
            before=_json(before),
            after=_json(after),
        )
    )


def _fit(text: str, length: int | None) -> str:
    # Whatever a caller typed must never make the row fail: a row that is not written is a
    # refusal or an attack that leaves no trace (and a 500 for the caller).
    text = text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
    return text if length is None or len(text) <= length else text[: length - len(CUT)] + CUT


def _json(value: Any) -> str | None:
    # Piccolo passes a str to JSONB as JSON text: encode every value, plain strings included.
    return None if value is None else json.dumps(value, default=str, sort_keys=True)
