"""The audit trail: one row per security-relevant action, written in the caller's transaction."""

from __future__ import annotations

import datetime as dt
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
            before=before,
            after=after,
        )
    )
