"""A node that leaves MASTER (keepalived's BACKUP, FAULT or STOP) holds its queue at once,
reconciles it once the peer is MASTER and has imported, and keeps everything after a partition.

Against the real PostgreSQL; the peer is a stand-in for node b's API over real pinned HTTPS
(its status and what it imported), the agent a fake on a unix socket: keepalived moving a VIP
between two nodes needs the lab (tests/lab). The events come through the FIFO reader with the
service's own hooks, as keepalived's notify_fifo delivers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from litestar import Litestar, Response, get
from litestar.response import Stream

from app.agent.client import AgentClient
from app.auth import tokens
from app.cluster import locks, status, vrrp
from app.db.tables import AuditLog
from app.replication import reconcile
from tests.clusterpeer import FakeAgent, fake_agent, peer_settings, serve_https

HELD = ["4dLq2G1xZ9z9vxA", "4dLq2G1xZ9z9vxB", "4dLq2G1xZ9z9vxC"]
IMPORTED = ["4dLq2G1xZ9z9vxA", "4dLq2G1xZ9z9vxB"]
AGENT = {
    "hold_all": HELD,
    "delete_ids": lambda args: len(args["queue_ids"]),
    "release_ids": lambda args: len(args["queue_ids"]),
    "flush_all": None,
}


class Peer:
    """Node b as the leaving node sees it: its VRRP state since when, whether it has written
    what it took over, and its agent answering."""

    def __init__(
        self,
        state: str,
        since: dt.datetime,
        writing_for: int = 0,
        legacy: bool = False,
        importing_answers: int = 0,
    ) -> None:
        self.state, self.since = state, since
        self.asked = 0
        self.asked_early: list[int] = []
        # How many times the list of imports answers 503 "importing" first, as a peer that is
        # still writing it does when this node boots and asks without looking at its status.
        self.importing_answers = importing_answers
        self.imports_asked = 0
        # A MASTER writes what it took over after its agent finished the import: its agent
        # answers again (its queue has a count) while the list of imports is still empty.
        self.writing_for = writing_for
        # A peer from before promotions were written says nothing of them; its agent runs one
        # verb at a time, so while it imports its status has no count.
        self.legacy = legacy

    def written(self) -> bool:
        """Written by the time of the status answer after the first writing_for ones."""
        return self.writing_for == 0 or self.asked > self.writing_for

    def app(self) -> Litestar:
        @get("/api/cluster/status")
        async def cluster_status() -> dict[str, Any]:
            self.asked += 1
            vrrp: dict[str, Any] = {"state": self.state, "since": self.since.isoformat()}
            messages = 2
            if self.legacy:
                messages = 2 if self.written() else None
            elif self.state == "MASTER":
                vrrp["promotion"] = {"imported": 2, "error": ""} if self.written() else None
            return {"node_id": "b", "vrrp": vrrp, "queue": {"messages": messages}}

        @get("/api/queue/imported")
        async def imported() -> Any:
            self.imports_asked += 1
            if self.imports_asked <= self.importing_answers:
                detail = "this node is still taking over the peer's queue; ask again"
                return Response({"error": "importing", "detail": detail}, status_code=503)
            if not self.written():
                self.asked_early.append(self.asked)
                return {"queue_ids": []}
            return {"queue_ids": IMPORTED}

        return Litestar([cluster_status, imported])


@contextlib.asynccontextmanager
async def node_a(settings: Any, tmp_path: Any, peer: Peer) -> AsyncIterator[tuple[Any, FakeAgent]]:
    async with fake_agent(dict(AGENT)) as agent, serve_https(peer.app(), settings) as https:
        token = await tokens.create("a-to-b", "cluster", "test")
        yield (
            peer_settings(
                settings, https, token, node_id="a", agent_socket=agent.path, state_dir=tmp_path
            ),
            agent,
        )


async def leave(settings: Any, agent: FakeAgent, left_at: dt.datetime) -> Any:
    return await reconcile.after_leaving_master(settings, AgentClient(agent.path), left_at)


async def test_after_the_peer_took_over_the_imported_mail_is_deleted_the_rest_released(
    settings, tmp_path
):
    left_at = dt.datetime.now(dt.UTC)
    peer = Peer("MASTER", left_at + dt.timedelta(seconds=1))
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await leave(a, agent, left_at)
    assert (result.outcome, result.held, result.deleted, result.released) == (
        "reconciled",
        3,
        2,
        1,
    )
    assert agent.args("delete_ids") == [{"queue_ids": IMPORTED}]
    assert agent.args("release_ids") == [{"queue_ids": ["4dLq2G1xZ9z9vxC"]}]


async def test_it_waits_until_the_peer_is_master(settings, tmp_path, monkeypatch):
    monkeypatch.setattr(reconcile, "LEAVE_POLL_SECONDS", 0.1)
    left_at = dt.datetime.now(dt.UTC)
    peer = Peer("BACKUP", left_at - dt.timedelta(minutes=5))
    async with node_a(settings, tmp_path, peer) as (a, agent):
        original = reconcile.status.peer_status

        async def peer_becomes_master(s: Any) -> Any:
            if peer.asked >= 3:
                peer.state, peer.since = "MASTER", left_at + dt.timedelta(seconds=1)
            return await original(s)

        monkeypatch.setattr(reconcile.status, "peer_status", peer_becomes_master)
        result = await leave(a, agent, left_at)
    assert peer.asked >= 4
    assert result.outcome == "reconciled" and result.deleted == 2


async def test_a_master_peer_still_importing_a_big_replica_is_waited_for(
    settings, tmp_path, monkeypatch
):
    """The lab's peer took 87 s to import 100,000 messages; a node that stopped waiting after
    60 s kept its whole queue beside the peer's copy, and every message would go out twice."""
    monkeypatch.setattr(reconcile, "LEAVE_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(reconcile, "LEAVE_POLL_SECONDS", 0.1)
    left_at = dt.datetime.now(dt.UTC)
    peer = Peer("MASTER", left_at + dt.timedelta(seconds=1), writing_for=8)
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await leave(a, agent, left_at)
    assert peer.asked == 9 and peer.asked_early == []
    assert (result.outcome, result.deleted, result.released) == ("reconciled", 2, 1)


async def test_a_peer_whose_agent_answers_before_its_imports_are_written_is_waited_for(
    settings, tmp_path, monkeypatch
):
    """The lab's leaving-MASTER drill once had every message delivered twice: the peer's agent
    answered between the end of its import and the insert of what it imported, the leaving
    node asked for the list at that moment, was told nothing, and released its whole queue."""
    monkeypatch.setattr(reconcile, "LEAVE_POLL_SECONDS", 0.1)
    left_at = dt.datetime.now(dt.UTC)
    peer = Peer("MASTER", left_at + dt.timedelta(seconds=1), writing_for=2)
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await leave(a, agent, left_at)
    assert peer.asked == 3 and peer.asked_early == []
    assert (result.outcome, result.deleted, result.released) == ("reconciled", 2, 1)


async def test_a_peer_from_before_promotions_were_written_is_waited_for_by_its_agent(
    settings, tmp_path, monkeypatch
):
    """During an upgrade the peer may still run the code before: its status says nothing of
    its promotion, and the count of its queue is back once its agent has imported."""
    monkeypatch.setattr(reconcile, "LEAVE_POLL_SECONDS", 0.1)
    left_at = dt.datetime.now(dt.UTC)
    peer = Peer("MASTER", left_at + dt.timedelta(seconds=1), writing_for=3, legacy=True)
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await leave(a, agent, left_at)
    assert peer.asked == 4
    assert (result.outcome, result.deleted, result.released) == ("reconciled", 2, 1)


async def test_a_node_that_boots_while_the_peer_writes_its_imports_asks_again(
    settings, tmp_path, monkeypatch
):
    """The boot reconcile asks without waiting for the peer's status: while the peer answers
    that it is still taking over, the queue here stays held and it asks again."""
    monkeypatch.setattr(reconcile, "LEAVE_POLL_SECONDS", 0.05)
    peer = Peer("MASTER", dt.datetime.now(dt.UTC), importing_answers=3)
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await reconcile.run_once(a, AgentClient(agent.path))
    assert peer.imports_asked == 4
    assert (result.outcome, result.deleted, result.released) == ("reconciled", 2, 1)
    assert agent.verbs[0] == "hold_all"


async def test_a_peer_that_stays_busy_taking_over_leaves_the_mail_held_with_its_reason(
    settings, tmp_path, monkeypatch
):
    monkeypatch.setattr(reconcile, "LEAVE_POLL_SECONDS", 0.05)
    monkeypatch.setattr(reconcile, "ASK_WAIT_SECONDS", 0.3)
    peer = Peer("MASTER", dt.datetime.now(dt.UTC), importing_answers=1000)
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await reconcile.run_once(a, AgentClient(agent.path))
    assert (result.outcome, result.held) == ("held", 3)
    assert result.detail == (
        "the peer answered HTTP 503: this node is still taking over the peer's queue; ask again"
    )
    assert agent.verbs == ["hold_all"]
    assert reconcile.pending(a) == HELD


async def test_after_a_partition_nothing_is_held_or_deleted(settings, tmp_path):
    left_at = dt.datetime.now(dt.UTC)
    # The peer became MASTER long before this node left MASTER: both were MASTER at once.
    peer = Peer("MASTER", left_at - dt.timedelta(minutes=3))
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await leave(a, agent, left_at)
    assert result.outcome == "partition"
    assert agent.verbs == []
    [entry] = await AuditLog.select().where(AuditLog.action == "queue.reconcile")
    assert entry["target"] == "partition"


async def test_a_peer_that_does_not_take_over_leaves_the_queue_alone(
    settings, tmp_path, monkeypatch
):
    monkeypatch.setattr(reconcile, "LEAVE_WAIT_SECONDS", 0.5)
    monkeypatch.setattr(reconcile, "LEAVE_POLL_SECONDS", 0.1)
    peer = Peer("BACKUP", dt.datetime.now(dt.UTC))
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await leave(a, agent, dt.datetime.now(dt.UTC))
    assert result.outcome == "nothing" and "BACKUP" in result.detail
    assert agent.verbs == []


async def test_during_a_switchover_it_leaves_the_queue_to_the_switchover(settings, tmp_path):
    await locks.acquire(locks.SWITCHOVER, "a-switchover", ttl_seconds=60)
    peer = Peer("MASTER", dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await leave(a, agent, dt.datetime.now(dt.UTC))
    assert result.outcome == "nothing"
    assert agent.verbs == [] and peer.asked == 0


# -- through the event reader ------------------------------------------------------------------


class Queue:
    """This node's queue as the agent's hold_all sees it: it names what it puts on hold, so a
    second hold_all names only what arrived since (nothing, here). Notes how often the peer had
    been asked when the queue was held."""

    def __init__(self, peer: Peer) -> None:
        self.peer, self.waiting = peer, list(HELD)
        self.peer_asked_at_hold: list[int] = []

    def hold_all(self, args: Any) -> list[str]:
        self.peer_asked_at_hold.append(self.peer.asked)
        held, self.waiting = self.waiting, []
        return held


@contextlib.asynccontextmanager
async def events(a: Any, agent: Any, tmp_path: Any) -> AsyncIterator[Callable[[str], None]]:
    """The service's reader on a FIFO; yields a function that writes keepalived's line."""
    fifo, state_file = tmp_path / "vrrp.fifo", tmp_path / "vrrp.state"
    hooks = vrrp.service_hooks(a, AgentClient(agent.path))
    reader = asyncio.create_task(vrrp.run(fifo, "a", state_file, **hooks))
    await until(fifo.exists)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)

    def notify(state: str) -> None:
        os.write(writer, f'INSTANCE "VI_MAIL" {state} 150\n'.encode())

    try:
        yield notify
    finally:
        os.close(writer)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def until(condition: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def reading_node_a(
    settings: Any, tmp_path: Any, peer: Peer
) -> AsyncIterator[tuple[Any, Any, Queue, Callable[[str], None]]]:
    queue = Queue(peer)
    script = {
        **AGENT,
        "hold_all": queue.hold_all,
        "import_replica": {"imported": [], "refused": [], "refused_total": 0},
    }
    async with fake_agent(script) as agent, serve_https(peer.app(), settings) as https:
        token = await tokens.create("a-to-b", "cluster", "test")
        a = peer_settings(
            settings, https, token, node_id="a", agent_socket=agent.path, state_dir=tmp_path
        )
        async with events(a, agent, tmp_path) as notify:
            yield a, agent, queue, notify


@pytest.mark.parametrize("leaving", ["BACKUP", "FAULT", "STOP"])
async def test_leaving_master_holds_the_queue_at_once_and_the_reconcile_releases_the_rest(
    settings, tmp_path, monkeypatch, leaving
):
    monkeypatch.setattr(reconcile, "LEAVE_POLL_SECONDS", 0.1)
    peer = Peer("BACKUP", dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    async with reading_node_a(settings, tmp_path, peer) as (a, agent, queue, notify):
        # After a crash the node boots BACKUP: no event says it left MASTER, and the reader
        # holds nothing (mailrelay-reconcile.service did, before Postfix started).
        notify("BACKUP")
        notify("MASTER")
        await until(lambda: agent.verbs == ["import_replica"])
        notify(leaving)
        await until(lambda: "hold_all" in agent.verbs)
        # Held before the peer was asked or had taken over anything.
        assert queue.peer_asked_at_hold == [0]
        assert reconcile._ids(reconcile.leaving_file(a)) == HELD

        peer.state, peer.since = "MASTER", dt.datetime.now(dt.UTC)
        await until(lambda: "flush_all" in agent.verbs)
    assert agent.args("delete_ids") == [{"queue_ids": IMPORTED}]
    assert agent.args("release_ids") == [{"queue_ids": ["4dLq2G1xZ9z9vxC"]}]
    assert not reconcile.leaving_file(a).exists()
    assert reconcile.pending(a) == []


@pytest.mark.parametrize(
    ("peer_state", "since"),
    [("MASTER", dt.timedelta(minutes=-3)), ("BACKUP", dt.timedelta(0))],
    ids=["after-a-partition", "the-peer-does-not-take-over"],
)
async def test_what_leaving_held_is_released_when_the_peer_took_nothing_over(
    settings, tmp_path, monkeypatch, peer_state, since
):
    monkeypatch.setattr(reconcile, "LEAVE_WAIT_SECONDS", 0.5)
    monkeypatch.setattr(reconcile, "LEAVE_POLL_SECONDS", 0.1)
    peer = Peer(peer_state, dt.datetime.now(dt.UTC) + since)
    async with reading_node_a(settings, tmp_path, peer) as (a, agent, _queue, notify):
        notify("MASTER")
        await until(lambda: agent.verbs == ["import_replica"])
        notify("BACKUP")
        await until(lambda: "flush_all" in agent.verbs)
    assert agent.verbs == ["import_replica", "hold_all", "release_ids", "flush_all"]
    assert agent.args("release_ids") == [{"queue_ids": HELD}]
    assert not reconcile.leaving_file(a).exists()


async def test_what_leaving_held_is_settled_by_the_next_reconcile_when_the_reader_stopped(
    settings, tmp_path
):
    """The reader restarted (new code, a crash of it) between holding and reconciling: the
    held IDs are on disk, and the next reconcile (the boot one, `mailrelay reconcile`) takes
    them, though hold_all names them no more."""
    peer = Peer("MASTER", dt.datetime.now(dt.UTC))
    queue = Queue(peer)
    async with node_a(settings, tmp_path, peer) as (a, agent):
        agent.results["hold_all"] = queue.hold_all
        assert await reconcile.hold_on_leaving(a, AgentClient(agent.path)) == HELD
        result = await reconcile.run_once(a, AgentClient(agent.path))
    assert (result.outcome, result.deleted, result.released) == ("reconciled", 2, 1)
    assert agent.args("release_ids") == [{"queue_ids": ["4dLq2G1xZ9z9vxC"]}]
    assert not reconcile.leaving_file(a).exists()


class OddPeer(Peer):
    """A MASTER peer that has written its takeover, and answers the list of imports with
    `imported` (a Litestar response) instead."""

    def __init__(self, imported: Any) -> None:
        super().__init__("MASTER", dt.datetime.now(dt.UTC))
        self.imported = imported

    def app(self) -> Litestar:
        @get("/api/cluster/status")
        async def cluster_status() -> dict[str, Any]:
            vrrp = {"state": "MASTER", "since": self.since.isoformat()}
            vrrp["promotion"] = {"imported": 2, "error": ""}
            return {"node_id": "b", "vrrp": vrrp, "queue": {"messages": 2}}

        @get("/api/queue/imported")
        async def imported() -> Any:
            return self.imported()

        return Litestar([cluster_status, imported])


async def test_an_answer_nested_too_deep_to_parse_leaves_the_mail_held(settings, tmp_path):
    deep = b"[" * 200_000 + b"]" * 200_000
    peer = OddPeer(lambda: Response(deep, media_type="application/json"))
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await reconcile.run_once(a, AgentClient(agent.path))
    assert (result.outcome, result.held) == ("held", 3)
    assert result.detail == "the peer's list of imports is not JSON"
    assert reconcile.pending(a) == HELD


async def test_a_peer_that_drips_its_answer_is_given_up_on(settings, tmp_path, monkeypatch):
    """A byte now and then keeps every read within its timeout: the answer as a whole has one."""
    monkeypatch.setattr(reconcile, "IMPORTS_ANSWER_SECONDS", 1.0)

    async def drip() -> AsyncIterator[bytes]:
        yield b'{"queue_ids": ['
        for _ in range(100):
            await asyncio.sleep(0.2)
            yield b" "

    peer = OddPeer(lambda: Stream(drip(), media_type="application/json"))
    started = time.monotonic()
    async with node_a(settings, tmp_path, peer) as (a, agent):
        result = await reconcile.run_once(a, AgentClient(agent.path))
    assert time.monotonic() - started < 10
    assert (result.outcome, result.held) == ("held", 3)
    assert result.detail.startswith("no answer from the peer at https://")
    assert result.detail.endswith("/api/queue/imported within 1 s")
    assert reconcile.pending(a) == HELD


async def test_a_peer_status_of_another_shape_is_an_unreachable_peer_not_a_crash(
    settings, tmp_path, monkeypatch
):
    """A time without its zone, as a buggy or foreign peer could send it: comparing it ended the
    reconcile (an unawaited task of the event reader) with a TypeError, and what leaving MASTER
    held stayed held, counted by nothing."""
    monkeypatch.setattr(reconcile, "LEAVE_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(reconcile, "LEAVE_POLL_SECONDS", 0.05)
    peer = Peer("MASTER", dt.datetime.now())  # naive
    async with node_a(settings, tmp_path, peer) as (a, agent):
        held = await reconcile.hold_on_leaving(a, AgentClient(agent.path))
        result = await reconcile.after_leaving_master(
            a, AgentClient(agent.path), dt.datetime.now(dt.UTC), held
        )
        answer = await status.peer_status(a)
    assert answer == {
        "reachable": False,
        "error": "unreachable: its VRRP state's time is not an ISO time with its zone",
    }
    # The peer could not be read: reconciled as a returning node, by what it says it took.
    assert result.outcome == "reconciled"
    assert agent.args("delete_ids") == [{"queue_ids": IMPORTED}]
