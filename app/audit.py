"""The audit trail: one row per security-relevant action, written in the caller's transaction."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from app.db.tables import AuditLog


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
            actor=actor,
            action=action,
            target=target,
            source_ip=source_ip,
            outcome=outcome,
            before=_json(before),
            after=_json(after),
        )
    )


def _json(value: Any) -> str | None:
    # Piccolo passes a str to JSONB as JSON text: encode every value, plain strings included.
    return None if value is None else json.dumps(value, default=str, sort_keys=True)
