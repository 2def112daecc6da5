"""Planned switchover: the active node hands the VIP and its mail to the peer, step by step.

Run on the active node (`mailrelay switchover`, or the Admin's form on /cluster):

  vip         this node holds the VIP (else: run it on the active node)
  peer        the peer answers and its keepalived is BACKUP, so it can take the VIP; without
              this, stopping keepalived here would leave the VIP nowhere until this node takes
              it back after the master-down interval
  final_sync  a last queue sync into the peer's replica; a failure stops the switchover before
              the VIP moves
  handover    the agent stops keepalived, waits until the VIP has left, starts it again: it
              comes back as BACKUP and, with nopreempt, the peer keeps the VIP
  peer_vip    the peer holds the VIP, is MASTER and has imported the replica
  reconcile   this node's queue is stale now: hold it, delete what the peer took over, release
              the rest (app.replication.reconcile). keepalived's events (MASTER -> STOP) leave
              it to this step while the switchover's lock is held
  smtp        the VIP answers SMTP: a 220 greeting, 250 to EHLO, QUIT

Each step is timed. The first failure ends the run, except that the SMTP check still runs once
the handover was tried: whether mail is accepted on the VIP is then what matters most. Only one
switchover runs at a time (a lease in cluster_locks; a second one reports a failed `lock` step
and nothing else). The whole report is audited as "cluster.switchover". A caller that shows the
steps as they happen passes `progress`: it is told the steps so far and the one starting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import smtplib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app import audit
from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.cluster import locks, status
from app.cluster.vip import VipCheckError, vip_held
from app.db.tables import SyncRun
from app.messages import Message, message_of
from app.replication import queuesync, reconcile
from app.settings import Settings

ACTION = "cluster.switchover"
LOCK = locks.SWITCHOVER
# Longer than a run can take: a final sync with its rsync timeouts, the waits below.
LOCK_TTL_SECONDS = 300
HANDOVER_TIMEOUT = 10
# The peer answers once it has imported the replica and injected the shadows it does not
# cover (sendmail each, tens of ms apiece).
PEER_VIP_WAIT = 30.0
POLL_SECONDS = 0.5
SYNC_CONFLICT_WAIT = 30.0
SMTP_PORT = 25
SMTP_TIMEOUT = 10.0


@dataclass
class Step:
    name: str
    outcome: str  # ok | failed | skipped
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class StepFailed(Exception):
    pass


# Told the steps done so far and the name of the step that starts now.
Progress = Callable[[list[Step], str], None]


def _no_progress(steps: list[Step], running: str) -> None:
    pass


class _Switchover:
    def __init__(self, settings: Settings, agent: AgentClient) -> None:
        self.settings = settings
        self.agent = agent
        self.vip = settings.vip_address or ""
        self.peer = Message("the peer")  # its node ID once it answered

    def plan(self) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
        return [
            ("vip", self.check_vip),
            ("peer", self.check_peer),
            ("final_sync", self.final_sync),
            ("handover", self.handover),
            ("peer_vip", self.check_peer_vip),
            ("reconcile", self.reconcile),
            ("smtp", self.check_smtp),
        ]

    async def check_vip(self) -> str:
        if not self.vip:
            raise StepFailed(Message("VIP_ADDRESS is not set on this node"))
        try:
            held = await asyncio.to_thread(vip_held, self.vip)
        except VipCheckError as exc:
            raise StepFailed(
                Message(
                    "cannot tell whether this node holds the VIP: {error}", error=message_of(exc)
                )
            ) from None
        if not held:
            raise StepFailed(
                Message(
                    "this node ({node}) does not hold the VIP {vip}: run it on the active node",
                    node=self.settings.node_id,
                    vip=self.vip,
                )
            )
        return Message("node {node} holds the VIP {vip}", node=self.settings.node_id, vip=self.vip)

    async def check_peer(self) -> str:
        answer = await status.peer_status(self.settings)
        if not answer["reachable"]:
            raise StepFailed(Message("the peer cannot be asked: {error}", error=answer["error"]))
        peer = answer["status"]
        self.peer = Message("node {node}", node=peer["node_id"])
        state = (peer.get("vrrp") or {}).get("state")
        if state != "BACKUP":
            raise StepFailed(
                Message(
                    "{peer}'s keepalived last reported {state}, not BACKUP: it could not take "
                    "the VIP",
                    peer=self.peer,
                    state=state or Message("no state"),
                )
            )
        if (peer.get("vip") or {}).get("held") is True:
            raise StepFailed(Message("{peer} holds the VIP too (a partition?)", peer=self.peer))
        return Message("{peer} answers and is BACKUP", peer=self.peer)

    async def final_sync(self) -> str:
        freeze = self.settings.sync_freeze
        # The timer's own run may be copying right now (a second or two): wait for it.
        deadline = time.monotonic() + SYNC_CONFLICT_WAIT
        while True:
            result = await queuesync.run_once(self.settings, self.agent, freeze)
            if result.outcome != "conflict" or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_SECONDS)
        if result.outcome != "ok":
            raise StepFailed(
                Message(
                    "the final queue sync: {outcome}: {detail}; the VIP stays here",
                    outcome=result.outcome,
                    detail=result.detail,
                )
            )
        run = (
            await SyncRun.select(SyncRun.files, SyncRun.bytes, SyncRun.freeze_seconds)
            .where((SyncRun.node_id == self.settings.node_id) & (SyncRun.outcome == "ok"))
            .order_by(SyncRun.id, ascending=False)
            .first()
        )
        assert run is not None  # run_once has just recorded it
        return Message(
            "{files} files, {bytes} bytes copied to {peer}'s replica; Postfix frozen {ms:.0f} ms "
            "({freeze})",
            files=run["files"],
            bytes=run["bytes"],
            peer=self.peer,
            ms=run["freeze_seconds"] * 1000,
            freeze=freeze,
        )

    async def handover(self) -> str:
        try:
            done = await self.agent.vip_handover(self.vip, timeout=HANDOVER_TIMEOUT)
        except (AgentUnavailable, AgentRefused) as exc:
            raise StepFailed(message_of(exc)) from None
        moved = Message(
            "keepalived stopped, the VIP left this node after {seconds:.2f} s, keepalived started "
            "again (BACKUP)",
            seconds=done["released_seconds"],
        )
        # From here the peer takes this node's queue over: this node must not deliver it too,
        # however long the peer takes (keepalived's events leave this to the switchover).
        why = await reconcile.hold_first(self.settings, self.agent)
        if why:
            return Message(
                "{moved}; this node's queue could not be held: {why}", moved=moved, why=why
            )
        return Message("{moved}; this node's queue is on hold", moved=moved)

    async def check_peer_vip(self) -> str:
        """Until the peer holds the VIP, is MASTER, and has written what it took over of this
        node's queue: the reconcile that follows asks for that list."""
        deadline = time.monotonic() + PEER_VIP_WAIT
        while True:
            answer = await status.peer_status(self.settings)
            peer = answer.get("status") or {}
            held = (peer.get("vip") or {}).get("held")
            state = (peer.get("vrrp") or {}).get("state")
            written = reconcile.took_over(peer)
            if held is True and state == "MASTER" and written:
                return Message(
                    "{peer} holds the VIP {vip} and is MASTER", peer=self.peer, vip=self.vip
                )
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_SECONDS)
        seen = (
            answer["error"]
            if not answer["reachable"]
            else Message(
                "VIP held: {held}, VRRP state: {state}, its takeover of this node's queue "
                "written: {written}",
                held=held,
                state=state,
                written=written,
            )
        )
        try:
            vip_here: bool | None = await asyncio.to_thread(vip_held, self.vip)
            here = Message("yes") if vip_here else Message("no")
        except VipCheckError as exc:
            vip_here = None
            here = Message("unknown ({error})", error=message_of(exc))
        if vip_here and state != "MASTER":
            # The VIP came back and the peer took nothing over: the queue is this node's again.
            released = await reconcile.release_held(self.settings, self.agent, "switchover", "")
            after = Message(
                "{released} messages held at the handover were released here", released=released
            )
        else:
            after = Message(
                "This node's queue stays on hold (the held-mail alert counts it): check the "
                "dashboard, then run `mailrelay reconcile` here once the peer is active"
            )
        raise StepFailed(
            Message(
                "{peer} has not taken over after {seconds:g} s ({seen}); the VIP is on this "
                "node: {here}. {after}",
                peer=self.peer,
                seconds=PEER_VIP_WAIT,
                seen=seen,
                here=here,
                after=after,
            )
        )

    async def reconcile(self) -> str:
        result = await reconcile.run_once(self.settings, self.agent)
        if result.outcome == "held":
            raise StepFailed(
                Message(
                    "{held} messages stay on hold here: {detail}; the dashboard offers to "
                    "release them",
                    held=result.held,
                    detail=result.detail,
                )
            )
        if result.outcome == "nothing":
            return Message("the queue here was empty")
        return Message(
            "{held} messages held; {deleted} taken over by {peer} and deleted here, {released} "
            "released to be delivered from here",
            held=result.held,
            deleted=result.deleted,
            peer=self.peer,
            released=result.released,
        )

    async def check_smtp(self) -> str:
        return await asyncio.to_thread(smtp_check, self.vip, SMTP_PORT, self.settings.hostname)


def smtp_check(host: str, port: int, helo_name: str, timeout: float = SMTP_TIMEOUT) -> str:
    """Connect, expect a 220 greeting and 250 to EHLO, QUIT. Raises StepFailed."""
    try:
        with smtplib.SMTP(timeout=timeout, local_hostname=helo_name) as smtp:
            code, greeting = smtp.connect(host, port)
            if code != 220:
                raise StepFailed(
                    Message(
                        "{host}:{port} greeted with {code} {greeting!r}",
                        host=host,
                        port=port,
                        code=code,
                        greeting=greeting.decode(),
                    )
                )
            code, _features = smtp.ehlo()
            if code != 250:
                raise StepFailed(
                    Message(
                        "{host}:{port} answered EHLO with {code}", host=host, port=port, code=code
                    )
                )
    except (OSError, smtplib.SMTPException) as exc:
        raise StepFailed(
            Message(
                "SMTP on {host}:{port}: {error}",
                host=host,
                port=port,
                error=str(exc) or type(exc).__name__,
            )
        ) from None
    return Message(
        "{host}:{port} greets ({greeting}) and accepts EHLO",
        host=host,
        port=port,
        greeting=greeting.decode(errors="replace")[:80],
    )


async def run(
    settings: Settings,
    agent: AgentClient,
    actor: str,
    source_ip: str = "",
    progress: Progress = _no_progress,
) -> list[Step]:
    """The whole switchover; its report, one Step per step (those not run are "skipped")."""
    holder = f"{settings.node_id}-{actor}-{secrets.token_hex(4)}"[:64]
    try:
        lease = await locks.acquire(LOCK, holder, LOCK_TTL_SECONDS)
    except locks.LockConflict as exc:
        busy = Message("another switchover is running: {error}", error=message_of(exc))
        steps = [Step("lock", "failed", busy, 0.0)]
    else:
        try:
            steps = await _steps(_Switchover(settings, agent), progress)
        finally:
            await locks.release(LOCK, holder, lease.fencing_token)
    failed = not all(step.ok for step in steps)
    await audit.record(
        actor,
        ACTION,
        f"VIP {settings.vip_address or '-'} from node {settings.node_id}",
        source_ip,
        "failed" if failed else "ok",
        after={"steps": [dataclasses.asdict(step) for step in steps]},
    )
    return steps


async def _steps(switchover: _Switchover, progress: Progress) -> list[Step]:
    steps: list[Step] = []
    failed = handover_tried = False
    for name, action in switchover.plan():
        if failed and not (name == "smtp" and handover_tried):
            steps.append(Step(name, "skipped", Message("not run: an earlier step failed"), 0.0))
            continue
        handover_tried = handover_tried or name == "handover"
        progress(list(steps), name)
        started = time.monotonic()
        try:
            detail, outcome = await action(), "ok"
        except StepFailed as exc:
            detail, outcome, failed = message_of(exc), "failed", True
        steps.append(Step(name, outcome, detail, time.monotonic() - started))
    return steps
