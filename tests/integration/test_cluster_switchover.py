"""The planned switchover's steps against the real PostgreSQL, without the two-node lab.

keepalived and a VIP that really moves need the lab (tests/lab; the real agent's vip_handover is
tested in test_cluster_agent.py). Here the agent is a fake on a unix socket, and the peer is a
small stand-in for node b's API over real HTTPS (pinned): BACKUP until this node's agent was
asked to hand the VIP over, then MASTER with the VIP, as keepalived would make it. The VIP is
127.0.0.1 ("held" by this machine) and the new active node's SMTP an aiosmtpd on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from litestar import Litestar, Request, get
from litestar.exceptions import HTTPException

from app.agent.client import AgentClient
from app.auth import tokens
from app.cluster import locks, switchover
from app.db.tables import ApiToken, AuditLog, SyncRun
from app.replication import reconcile
from tests.clusterpeer import (
    HELD_VIP,
    NOT_HELD_VIP,
    FakeAgent,
    fake_agent,
    peer_settings,
    serve_https,
)

STEPS = ["vip", "peer", "final_sync", "handover", "peer_vip", "reconcile", "smtp"]
HELD = ["4dLq2G1xZ9z9vxA", "4dLq2G1xZ9z9vxB", "4dLq2G1xZ9z9vxC"]
# What node b took over from a's replica (and one ID of an older failover).
IMPORTED = ["4dLq2G1xZ9z9vxA", "4dLq2G1xZ9z9vxB", "4dLq2G1xZ9z9vxZ"]
TAKEOVER_FAILED = "this node's takeover of the peer's queue failed: the replica is not a directory"
SYNC_REPORT = {"ok": True, "freeze_seconds": 0.12, "files": 3, "bytes": 4567}


def agent_results(**changes: Any) -> dict[str, Any]:
    return {
        "queue_sync": SYNC_REPORT,
        "vip_handover": {"released_seconds": 0.41, "seconds": 0.9},
        "hold_all": HELD,
        "delete_ids": lambda args: len(args["queue_ids"]),
        "release_ids": lambda args: len(args["queue_ids"]),
        "flush_all": None,
    } | changes


class PeerB:
    """Node b's API as the switchover reads it."""

    def __init__(
        self,
        agent: FakeAgent,
        state_before: str = "BACKUP",
        takes_over: bool = True,
        answers_imports: bool = True,
        writing_for: int = 0,
    ) -> None:
        self.agent = agent
        self.state_before = state_before
        self.takes_over = takes_over
        self.answers_imports = answers_imports
        # Status answers as MASTER before b has written what it took over (its agent answers
        # again in between), and what the list of imports says meanwhile.
        self.writing_for = writing_for
        self.master_answers = 0
        self.asked_early = 0
        self.tokens: list[str] = []

    def status(self) -> dict[str, Any]:
        moved = self.takes_over and "vip_handover" in self.agent.verbs
        vrrp: dict[str, Any] = {"state": "MASTER" if moved else self.state_before}
        if moved:
            self.master_answers += 1
            vrrp["promotion"] = {"imported": 3, "error": ""} if self.written() else None
        return {
            "node_id": "b",
            "cluster_mode": "slave",
            "vrrp": vrrp,
            "vip": {"address": HELD_VIP, "held": moved},
            "queue": {"messages": 3, "replica_files": 0, "replica_bytes": 0},
        }

    def written(self) -> bool:
        return self.master_answers > self.writing_for

    def app(self) -> Litestar:
        @get("/api/cluster/status")
        async def cluster_status(request: Request[Any, Any, Any]) -> dict[str, Any]:
            self.tokens.append(request.headers.get("authorization", ""))
            return self.status()

        @get("/api/queue/imported")
        async def imported() -> dict[str, Any]:
            if not self.answers_imports:
                raise HTTPException(status_code=503, detail=TAKEOVER_FAILED)
            if not self.written():
                self.asked_early += 1
                return {"queue_ids": []}
            return {"queue_ids": IMPORTED}

        return Litestar([cluster_status, imported])


@dataclasses.dataclass
class Cluster:
    settings: Any
    agent: FakeAgent
    peer: PeerB

    async def run(self) -> list[switchover.Step]:
        return await switchover.run(
            self.settings, AgentClient(self.agent.path), "admin", "192.0.2.7"
        )


@contextlib.asynccontextmanager
async def cluster(
    settings: Any, tmp_path: Any, results: dict[str, Any] | None = None, **peer: Any
) -> AsyncIterator[Cluster]:
    async with fake_agent(results or agent_results()) as agent:
        b = PeerB(agent, **peer)
        async with serve_https(b.app(), settings) as https:
            token = await tokens.create(f"a-to-b-{len(await ApiToken.select())}", "cluster", "t")
            a = peer_settings(
                settings,
                https,
                token,
                node_id="a",
                vip_address=HELD_VIP,
                agent_socket=agent.path,
                state_dir=tmp_path,
                peer_node_ip="198.18.0.12",
            )
            yield Cluster(a, agent, b)


@pytest.fixture
def smtp(monkeypatch):
    """The new active node's Postfix, as far as the SMTP check sees it."""
    with socket.socket() as probe:
        probe.bind((HELD_VIP, 0))
        port = probe.getsockname()[1]
    controller = Controller(object(), hostname=HELD_VIP, port=port)
    controller.start()
    monkeypatch.setattr(switchover, "SMTP_PORT", port)
    yield port
    controller.stop()


def outcomes(steps: list[switchover.Step]) -> dict[str, str]:
    return {step.name: step.outcome for step in steps}


async def audited() -> dict[str, Any]:
    [entry] = (
        await AuditLog.select()
        .where(AuditLog.action == "cluster.switchover")
        .output(load_json=True)
    )
    return entry


async def test_a_switchover_reports_every_step_with_its_time(settings, tmp_path, smtp):
    async with cluster(settings, tmp_path) as c:
        steps = await c.run()

    assert outcomes(steps) == dict.fromkeys(STEPS, "ok"), steps
    detail = {step.name: step.detail for step in steps}
    assert detail["vip"] == f"node a holds the VIP {HELD_VIP}"
    assert detail["peer"] == "node b answers and is BACKUP"
    assert detail["final_sync"] == (
        "3 files, 4567 bytes copied to node b's replica; Postfix frozen 120 ms (freeze)"
    )
    assert "the VIP left this node after 0.41 s" in detail["handover"]
    assert detail["peer_vip"] == f"node b holds the VIP {HELD_VIP} and is MASTER"
    assert detail["reconcile"] == (
        "3 messages held; 2 taken over by node b and deleted here, 1 released to be delivered "
        "from here"
    )
    assert detail["smtp"].startswith(f"{HELD_VIP}:{smtp} greets (")
    assert all(step.seconds >= 0 for step in steps)
    assert sum(step.seconds for step in steps) < 30

    # The agent did exactly this, in this order: no handover before the final sync.
    # The queue is held as the VIP leaves, before the peer can import a message of it.
    assert detail["handover"].endswith("; this node's queue is on hold")
    assert c.agent.verbs == [
        "queue_sync",
        "vip_handover",
        "hold_all",
        "hold_all",
        "delete_ids",
        "release_ids",
        "flush_all",
    ]
    assert c.agent.args("queue_sync") == [{"freeze": "freeze"}]
    assert c.agent.args("vip_handover") == [{"vip": HELD_VIP, "timeout": 10}]
    assert c.agent.args("delete_ids") == [{"queue_ids": HELD[:2]}]
    assert c.agent.args("release_ids") == [{"queue_ids": HELD[2:]}]
    assert set(c.peer.tokens) == {f"Bearer {c.settings.peer_api_token}"}
    assert await SyncRun.count().where(SyncRun.outcome == "ok") == 1

    entry = await audited()
    assert (entry["actor"], entry["outcome"], entry["source_ip"]) == ("admin", "ok", "192.0.2.7")
    assert entry["target"] == f"VIP {HELD_VIP} from node a"
    assert [step["name"] for step in entry["after"]["steps"]] == STEPS
    # The lease is free again.
    await locks.acquire(switchover.LOCK, "next-switchover", 5)


async def test_the_reconcile_waits_until_the_peer_has_written_what_it_took_over(
    settings, tmp_path, smtp, monkeypatch
):
    """b is MASTER and its agent answers a moment before its list of imports is written: the
    reconcile asked then would be told nothing and release all of a's queue, which b delivers
    too."""
    monkeypatch.setattr(switchover, "POLL_SECONDS", 0.05)
    async with cluster(settings, tmp_path, writing_for=3) as c:
        steps = await c.run()
    assert outcomes(steps) == dict.fromkeys(STEPS, "ok"), steps
    assert c.peer.master_answers == 4 and c.peer.asked_early == 0
    assert c.agent.args("delete_ids") == [{"queue_ids": HELD[:2]}]


async def test_a_node_without_the_vip_refuses_and_changes_nothing(settings, tmp_path):
    async with cluster(settings, tmp_path) as c:
        c.settings = dataclasses.replace(c.settings, vip_address=NOT_HELD_VIP)
        steps = await c.run()
    assert outcomes(steps) == {"vip": "failed"} | dict.fromkeys(STEPS[1:], "skipped")
    assert steps[0].detail == (
        f"this node (a) does not hold the VIP {NOT_HELD_VIP}: run it on the active node"
    )
    assert c.agent.verbs == [] and c.peer.tokens == []
    assert (await audited())["outcome"] == "failed"


async def test_a_peer_that_could_not_take_the_vip_stops_it_before_anything_changes(
    settings, tmp_path
):
    async with cluster(settings, tmp_path, state_before="FAULT") as c:
        steps = await c.run()
    assert outcomes(steps)["peer"] == "failed"
    assert steps[1].detail == (
        "node b's keepalived last reported FAULT, not BACKUP: it could not take the VIP"
    )
    assert c.agent.verbs == []

    async with cluster(settings, tmp_path) as c:
        c.settings = dataclasses.replace(c.settings, peer_api_url=None)
        steps = await c.run()
    assert steps[1].outcome == "failed"
    assert steps[1].detail.startswith("the peer cannot be asked: not configured: PEER_API_URL")
    assert c.agent.verbs == []


async def test_a_failed_final_sync_keeps_the_vip_here(settings, tmp_path):
    failed = {"ok": False, "error": "rsync: connection refused", "freeze_seconds": 0.1}
    async with cluster(settings, tmp_path, agent_results(queue_sync=failed)) as c:
        steps = await c.run()
    assert outcomes(steps) == {"vip": "ok", "peer": "ok", "final_sync": "failed"} | dict.fromkeys(
        STEPS[3:], "skipped"
    )
    assert steps[2].detail == (
        "the final queue sync: failed: rsync: connection refused; the VIP stays here"
    )
    assert c.agent.verbs == ["queue_sync"]


async def test_the_final_sync_waits_for_the_timers_run_to_finish(settings, tmp_path, smtp):
    timer_job = await asyncio.create_subprocess_exec("sleep", "60")  # the timer's job, alive
    timer_run = await locks.acquire("queue-sync", f"a-queue-sync-{timer_job.pid}", ttl_seconds=60)

    async def timer_run_ends() -> None:
        await asyncio.sleep(1.5)
        await locks.release("queue-sync", timer_run.holder, timer_run.fencing_token)

    async with cluster(settings, tmp_path) as c:
        ending = asyncio.create_task(timer_run_ends())
        steps = await c.run()
        await ending
    timer_job.kill()
    await timer_job.wait()
    assert outcomes(steps)["final_sync"] == "ok", steps[2].detail
    assert steps[2].seconds >= 1.0
    assert c.agent.verbs.count("queue_sync") == 1


async def test_a_peer_that_does_not_take_over_is_reported_and_the_queue_released_here(
    settings, tmp_path, smtp, monkeypatch
):
    """The VIP came back and the peer is not MASTER: it took nothing over, and what the
    handover held is delivered from here. SMTP on the VIP is still checked, since the handover
    was tried."""
    monkeypatch.setattr(switchover, "PEER_VIP_WAIT", 1.0)
    async with cluster(settings, tmp_path, takes_over=False) as c:
        steps = await c.run()
    assert outcomes(steps) == dict.fromkeys(STEPS[:4], "ok") | {
        "peer_vip": "failed",
        "reconcile": "skipped",
        "smtp": "ok",
    }
    detail = steps[4].detail
    assert detail.startswith("node b has not taken over after 1 s (VIP held: False, VRRP state: ")
    assert "the VIP is on this node: yes" in detail
    assert detail.endswith("3 messages held at the handover were released here")
    assert 1 <= steps[4].seconds < 5
    assert c.agent.verbs[-4:] == ["vip_handover", "hold_all", "release_ids", "flush_all"]
    assert c.agent.args("release_ids") == [{"queue_ids": HELD}]
    assert reconcile.pending(c.settings) == []


async def test_a_peer_that_takes_longer_than_the_wait_leaves_this_queue_held(
    settings, tmp_path, smtp, monkeypatch
):
    """The peer holds the VIP and is MASTER, but its takeover is not written within the wait
    (a big queue): this node's queue stays held, counted by the alert, never delivered here
    while the peer delivers it too."""
    monkeypatch.setattr(switchover, "PEER_VIP_WAIT", 1.0)
    monkeypatch.setattr(switchover, "POLL_SECONDS", 0.1)
    async with cluster(settings, tmp_path, writing_for=1_000_000) as c:
        steps = await c.run()
    assert outcomes(steps) == dict.fromkeys(STEPS[:4], "ok") | {
        "peer_vip": "failed",
        "reconcile": "skipped",
        "smtp": "ok",
    }
    assert "This node's queue stays on hold" in steps[4].detail
    assert c.agent.verbs[-2:] == ["vip_handover", "hold_all"]
    assert reconcile.pending(c.settings) == HELD


async def test_a_peer_that_cannot_say_what_it_took_over_leaves_the_mail_held(
    settings, tmp_path, smtp
):
    async with cluster(settings, tmp_path, answers_imports=False) as c:
        steps = await c.run()
    assert outcomes(steps) == dict.fromkeys(STEPS[:5], "ok") | {"reconcile": "failed", "smtp": "ok"}
    assert steps[5].detail == (
        f"3 messages stay on hold here: the peer answered HTTP 503: {TAKEOVER_FAILED}; "
        "the dashboard offers to release them"
    )
    assert c.agent.verbs[-1] == "hold_all"  # nothing deleted, nothing released
    assert reconcile.pending(c.settings) == HELD  # what the dashboard's alert is about
    assert (await audited())["outcome"] == "failed"


async def test_only_one_switchover_runs_at_a_time(settings, tmp_path):
    await locks.acquire(switchover.LOCK, "b-admin-other", 60)
    async with cluster(settings, tmp_path) as c:
        steps = await c.run()
    assert [(s.name, s.outcome) for s in steps] == [("lock", "failed")]
    assert steps[0].detail.startswith("another switchover is running: lock switchover is held by")
    assert c.agent.verbs == []
    assert (await audited())["outcome"] == "failed"


# -- the command --------------------------------------------------------------------------------


async def _cli(env: dict[str, str]) -> tuple[int, str, str]:
    """`mailrelay switchover` in a process while this loop serves the fakes."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "switchover",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _env(c: Cluster) -> dict[str, str]:
    return os.environ | {
        "NODE_ID": "a",
        "VIP_ADDRESS": c.settings.vip_address,
        "AGENT_SOCKET": str(c.agent.path),
        "STATE_DIR": str(c.settings.state_dir),
        "PEER_API_URL": c.settings.peer_api_url,
        "PEER_API_TOKEN": c.settings.peer_api_token,
        "PEER_CERT_FINGERPRINT": c.settings.peer_cert_fingerprint,
    }


async def test_the_command_prints_each_step_and_fails_with_the_step(settings, tmp_path):
    async with cluster(settings, tmp_path) as c:
        code, out, err = await _cli(_env(c) | {"VIP_ADDRESS": NOT_HELD_VIP})
    assert code == 1
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [["vip", "failed"]] + [
        [name, "skipped"] for name in STEPS[1:]
    ]
    assert lines[0].endswith(
        f"s  this node (a) does not hold the VIP {NOT_HELD_VIP}: run it on the active node"
    )
    assert err.strip().splitlines()[-1].startswith("mailrelay: switchover failed at step vip after")
    assert "Traceback" not in err
    assert (await audited())["actor"] == "cli"


async def test_the_command_on_the_active_node(settings, tmp_path, monkeypatch):
    """The whole run through the command. Its SMTP check connects to port 25 of the VIP, so
    this test needs 127.0.0.1:25 free to stand in for the new active node's Postfix."""
    try:
        controller = Controller(object(), hostname=HELD_VIP, port=25)
        controller.start()
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"127.0.0.1:25 is not free for a stand-in SMTP server: {exc}")
    try:
        async with cluster(settings, tmp_path) as c:
            code, out, err = await _cli(_env(c))
    finally:
        controller.stop()
    assert code == 0, out + err
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [[name, "ok"] for name in STEPS]
    assert lines[-1].startswith("switchover done in ") and lines[-1].endswith(" s")
    assert "handover    ok  " in lines[3]
