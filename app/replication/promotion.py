"""Promotion: when this node becomes MASTER (from keepalived's ordered events), take over the
peer's queue from the replica directory and record which of the peer's queue IDs it took, so
the peer can drop exactly those when it returns.

The takeover is recorded in promotions, in one transaction with its queue_imports rows, and only
then may the returning peer ask for them (`finished`): before, it could ask between the end of
the import and the insert, be told nothing, and deliver the mail this node delivers too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.agent.protocol import ImportAnswer, ReplicaImportAnswer
from app.cluster.locks import DATABASE_ERRORS, DATABASE_RETRY_SECONDS, pause_for_database
from app.cluster.vip import VipCheckError, vip_held
from app.db.tables import Promotion, QueueImport, VrrpEvent

log = logging.getLogger("mailrelay.promotion")
_RETRY_SECONDS = DATABASE_RETRY_SECONDS
# How long a takeover may take before it is written as failed; the returning peer waits as long
# for it (app/replication/reconcile.py, IMPORT_WAIT_SECONDS). The agent's client gives up
# reading after its timeout, not the agent: it is asked again, and that try, behind the first
# (the agent runs one verb at a time), answers with all the first one took as `earlier`.
TAKEOVER_WAIT_SECONDS = 900.0
ASK_AGAIN_SECONDS = 5.0


async def run_once(
    node_id: str, agent: AgentClient, master_at: dt.datetime, transition: str
) -> list[str]:
    """Take over the replica and the uncovered shadows for the MASTER event read at master_at."""
    started = time.monotonic()
    try:
        report = await _import(agent, takeover_key(master_at), started + TAKEOVER_WAIT_SECONDS)
    except (AgentUnavailable, AgentRefused, TimeoutError) as exc:
        # A takeover always ends with its row: the returning peer waits for it.
        why = str(exc) or f"the agent did not answer within {TAKEOVER_WAIT_SECONDS:g} s"
        log.error("promotion: importing the replica failed: %s", why)
        await _record(node_id, master_at, transition, [], 0, f"importing the replica failed: {why}")
        return []
    # Then the agent injected the peer's shadow copies that the replica does not cover
    # (mail the peer accepted after its last sync): their original queue IDs are recorded the
    # same way, so the returning peer deletes exactly those.
    # An answer without shadows (an agent from before shadow copies) counts as none.
    shadows = report.get("shadows") or ImportAnswer(
        imported=[], refused=[], refused_total=0, incomplete=0
    )
    # What earlier tries of this takeover took (a try whose answer never came, a failed one):
    # recorded again with this one, so the peer deletes them whatever was written before.
    imported = list(
        dict.fromkeys(report["imported"] + shadows["imported"] + report.get("earlier", []))
    )
    refused_total = report["refused_total"] + shadows["refused_total"]
    # The peer's files are untrusted: what the agent refused (links, odd files, oversized ones,
    # senders outside the allowed domains) stays in the replica for the operator to look at.
    for refused in report["refused"] + shadows["refused"]:
        log.error(
            "promotion: refused to take over %s from the replica: %s",
            refused["path"],
            refused["reason"],
        )
    # A takeover that stopped part-way (a sendmail failed) is written as failed, with what it
    # took: the returning peer keeps its mail held until a later try finishes the takeover
    # (the reader's restart), and then deletes what both tries took.
    error = report.get("error", "")
    if error:
        log.error("promotion: the takeover stopped before its end: %s", error)
        error = f"the takeover stopped before its end: {error}"
    await _record(node_id, master_at, transition, imported, refused_total, error)
    log.info(
        "promotion (%s): took over %d messages (%d of them shadows) and flushed, refused %d, "
        "%.2f s",
        transition,
        len(imported),
        len(shadows["imported"]),
        refused_total,
        time.monotonic() - started,
    )
    return imported


def takeover_key(master_at: dt.datetime) -> str:
    """The takeover's name for the agent's journal: its MASTER event's time, as read back
    from the database by a later try (app/agent/takeover_journal.py)."""
    return f"{master_at.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%S.%fZ}"


async def _import(agent: AgentClient, takeover: str, deadline: float) -> ReplicaImportAnswer:
    while True:
        try:
            return await agent.import_replica(takeover)
        except (AgentUnavailable, TimeoutError) as exc:
            if time.monotonic() + ASK_AGAIN_SECONDS >= deadline:
                raise
            why = str(exc) or f"no answer within {agent.timeout:g} s"
            log.warning("promotion: %s; asking the agent again", why)
            await asyncio.sleep(ASK_AGAIN_SECONDS)


async def _record(
    node_id: str,
    master_at: dt.datetime,
    transition: str,
    imported: list[str],
    refused: int,
    error: str,
) -> None:
    """Write the promotion and what it took over together, retrying while the database is down."""
    attempt = 0
    while True:
        now = dt.datetime.now(dt.UTC)
        try:
            async with Promotion._meta.db.transaction():
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
                await Promotion.insert(
                    Promotion(
                        node_id=node_id,
                        master_at=master_at,
                        finished_at=now,
                        imported=len(imported),
                        refused=refused,
                        error=error,
                    )
                )
            return
        except DATABASE_ERRORS as exc:
            what = f"promotion: cannot record the takeover of {len(imported)} messages"
            try:
                await pause_for_database(log, attempt, what, exc, _RETRY_SECONDS)
            except asyncio.CancelledError:
                # Stopped before the database came back: name what the peer cannot be told.
                log.error(
                    "promotion: the takeover at %s was not recorded; the peer's queue IDs it "
                    "took over: %s",
                    master_at.isoformat(),
                    " ".join(imported) or "none",
                )
                raise
            attempt += 1


async def finished(node_id: str, master_at: dt.datetime) -> Promotion | None:
    """The promotion that followed this node's MASTER event read at master_at, once written."""
    return (
        await Promotion.objects()
        .where((Promotion.node_id == node_id) & (Promotion.master_at >= master_at))
        .order_by(Promotion.id, ascending=False)
        .first()
    )


INTERRUPTED = (
    "the VRRP event reader stopped while it took over the peer's queue; what it took over is "
    "not known"
)


async def resume(
    node_id: str, started: dt.datetime, agent: AgentClient | None, vip: str | None
) -> None:
    """At the reader's start: the takeover that followed the last MASTER event before it, if it
    did not finish. Either the reader before stopped mid-takeover (a restart, a crash) or the
    takeover failed (its alert says to restart this reader once the cause is fixed).

    With `agent` (the state file in /run says keepalived still reports MASTER here, so no reboot
    came between) and the VIP on this node now, it is tried again: what the last try took over
    is gone from the replica and the shadow store, so nothing is taken twice. Otherwise a
    takeover left unwritten is written as failed: its queue IDs went with that process, and the
    returning peer keeps its mail held with this reason instead of waiting for a promotion that
    never comes. Events this reader reads itself (at `started` or later) are its own."""
    try:
        last = (
            await VrrpEvent.select(VrrpEvent.state, VrrpEvent.at)
            .where((VrrpEvent.node_id == node_id) & (VrrpEvent.at < started))
            .order_by(VrrpEvent.id, ascending=False)
            .first()
        )
        if last is None or last["state"] != "MASTER":
            return
        done = await finished(node_id, last["at"])
    except DATABASE_ERRORS as exc:
        log.warning("promotion: cannot look for a takeover left unfinished: %s", exc)
        return
    if done is not None and not done.error:
        return
    why = done.error if done is not None else INTERRUPTED
    if agent is not None and vip and await _holds(vip):
        log.warning("promotion (MASTER at %s): trying again: %s", last["at"].isoformat(), why)
        await run_once(node_id, agent, last["at"], f"MASTER, again at {started:%Y-%m-%dT%H:%M:%SZ}")
    elif done is None:
        log.error("promotion (MASTER at %s): %s", last["at"].isoformat(), why)
        await _record(node_id, last["at"], "", [], 0, why)


async def _holds(vip: str) -> bool:
    """Whether the VIP is on this node: keepalived may have moved it while no reader listened."""
    try:
        return await asyncio.to_thread(vip_held, vip)
    except VipCheckError as exc:
        log.warning("promotion: cannot tell whether this node holds the VIP: %s", exc)
        return False
