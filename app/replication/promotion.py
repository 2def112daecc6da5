"""Promotion: when this node becomes MASTER (from keepalived's ordered events), take over the
peer's queue from the replica directory and record which of the peer's queue IDs it took, so
the peer can drop exactly those when it returns."""

from __future__ import annotations

import datetime as dt
import logging
import time

from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.agent.protocol import ImportAnswer
from app.db.tables import QueueImport

log = logging.getLogger("mailrelay.promotion")


async def run_once(node_id: str, agent: AgentClient, transition: str) -> list[str]:
    started = time.monotonic()
    try:
        report = await agent.import_replica()
    except (AgentUnavailable, AgentRefused) as exc:
        log.error("promotion: importing the replica failed: %s", exc)
        return []
    # Then the agent injected the peer's shadow copies that the replica does not cover
    # (mail the peer accepted after its last sync): their original queue IDs are recorded the
    # same way, so the returning peer deletes exactly those.
    # An answer without shadows (an agent from before shadow copies) counts as none.
    shadows = report.get("shadows") or ImportAnswer(
        imported=[], refused=[], refused_total=0, incomplete=0
    )
    imported: list[str] = report["imported"] + shadows["imported"]
    # The peer's files are untrusted: what the agent refused (links, odd files, oversized ones,
    # senders outside the allowed domains) stays in the replica for the operator to look at.
    for refused in report["refused"] + shadows["refused"]:
        log.error(
            "promotion: refused to take over %s from the replica: %s",
            refused["path"],
            refused["reason"],
        )
    now = dt.datetime.now(dt.UTC)
    if imported:
        await QueueImport.insert(
            *[
                QueueImport(
                    node_id=node_id,
                    original_queue_id=queue_id,
                    imported_at=now,
                    transition=transition[:64],
                )
                for queue_id in imported
            ]
        )
    log.info(
        "promotion (%s): took over %d messages (%d of them shadows) and flushed, refused %d, "
        "%.2f s",
        transition,
        len(imported),
        len(shadows["imported"]),
        report["refused_total"] + shadows["refused_total"],
        time.monotonic() - started,
    )
    return imported
