"""A node's status, and its peer's over the real API, against the real PostgreSQL.

The peer is the real app with node b's settings, served over HTTPS in this test's event loop and
pinned by its certificate's fingerprint (tests/clusterpeer.py). Both nodes share the test
database, which is sound here because every row the status reads carries its node_id. The
agents are fakes on unix sockets (the real agent's status verb is tested in
test_cluster_agent.py); the VIP is 127.0.0.1 ("held") or an address no interface has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import socket
import time
from typing import Any

import pytest

from app import tls
from app.agent.client import AgentClient
from app.auth import tokens
from app.cluster import health, pull, status, vip
from app.config import service
from app.config import snapshot as snap
from app.db.tables import AppliedVersion, SyncRun, VrrpEvent
from app.web.app import create_app
from tests.clusterpeer import (
    AGENT_STATUS,
    HELD_VIP,
    NOT_HELD_VIP,
    fake_agent,
    passive_slave,
    peer_settings,
    serve_https,
)

PEER_AGENT_STATUS = AGENT_STATUS | {
    "queue": {"incoming": 0, "active": 0, "deferred": 1, "hold": 0, "maildrop": 0},
    "replica": {"files": 7, "bytes": 70000},
}


def node(settings: Any, agent: Any, **changes: Any) -> Any:
    """Node a, the master, holding the VIP unless a test says otherwise."""
    defaults = {"node_id": "a", "cluster_mode": "master", "vip_address": HELD_VIP}
    return dataclasses.replace(settings, agent_socket=agent.path, **defaults | changes)


def ago(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)


async def vrrp(node_id: str, *states: str) -> None:
    for i, state in enumerate(states):
        await VrrpEvent.insert(
            VrrpEvent(
                at=ago(600 - i),
                node_id=node_id,
                instance="VI_MAIL",
                state=state,
                priority=150,
            )
        )


async def sync_run(node_id: str, seconds_ago: float, outcome: str, **fields: Any) -> None:
    await SyncRun.insert(
        SyncRun(
            started_at=ago(seconds_ago),
            node_id=node_id,
            peer="198.18.0.12",
            outcome=outcome,
            **{"duration_seconds": 0.5, "freeze_seconds": 0.05, "files": 3, "bytes": 300} | fields,
        )
    )


async def applied(node_id: str, number: int) -> dt.datetime:
    at = ago(0)
    await AppliedVersion.insert(AppliedVersion(node_id=node_id, number=number, applied_at=at))
    return at


async def test_each_part_says_why_it_is_unknown(settings, tmp_path):
    """Nothing ran yet and the agent is down: a status all the same, each part with its reason."""
    lonely = dataclasses.replace(
        settings, node_id="a", vip_address=None, agent_socket=tmp_path / "no-agent.sock"
    )
    state = await status.node_status(lonely, AgentClient(lonely.agent_socket))

    assert state["node_id"] == "a"
    assert state["vrrp"] == {
        "state": None,
        "unknown": "keepalived has reported no VRRP state on this node yet",
    }
    assert state["vip"] == {"address": None, "held": None, "unknown": "VIP_ADDRESS is not set"}
    assert state["queue"]["messages"] is None
    assert "the privileged agent is not reachable" in state["queue"]["unknown"]
    assert state["sync"]["last"] is None and state["sync"]["lag_seconds"] is None
    assert state["sync"]["unknown"] == "no queue sync has succeeded on this node yet"
    assert state["config"]["applied"] is None and state["config"]["latest"] is None
    assert state["config"]["unknown"] == "no config version is applied on this node yet"
    assert json.loads(json.dumps(state)) == state  # what the peer receives, as it is


async def test_the_figures_of_the_active_node(settings):
    await vrrp("a", "BACKUP", "MASTER")
    await vrrp("b", "MASTER", "BACKUP")  # the other node's events are not this node's state
    await sync_run("a", 60, "ok", duration_seconds=0.5, freeze_seconds=0.04, files=3, bytes=300)
    await sync_run("a", 10, "failed", duration_seconds=1.5, detail="rsync: connection refused")
    await sync_run("b", 1, "ok")
    actor = service.Actor("test")
    await service.add_domain(actor, "example.com")
    await service.add_network(actor, "192.0.2.0/24")
    applied_at = await applied("a", 1)

    async with fake_agent({"status": AGENT_STATUS}) as agent:
        state = await status.node_status(node(settings, agent), AgentClient(agent.path))

    assert state["vrrp"]["state"] == "MASTER" and state["vrrp"]["priority"] == 150
    assert state["vip"] == {"address": HELD_VIP, "held": True}
    assert state["queue"] == {
        "messages": 7,
        "deferred": 4,
        "postfix_running": True,
        "replica_files": 5,
        "replica_bytes": 12345,
        "shadow_stored": 2,
        "shadow_unprotected_total": 3,
        "shadow_milter": "answering",
    }
    sync = state["sync"]
    assert sync["last"]["outcome"] == "failed"
    assert sync["last"]["detail"] == "rsync: connection refused"
    assert 10 <= sync["last"]["age_seconds"] < 15
    assert (sync["last_ok"]["files"], sync["last_ok"]["bytes"]) == (3, 300)
    assert sync["last_ok"]["freeze_seconds"] == 0.04
    # The lag runs from the end of the last successful run (60 s ago, 0.5 s long).
    assert 59.5 <= sync["lag_seconds"] < 65
    assert sync["runs"] == {"ok": 1, "failed": 1}
    assert "unknown" not in sync
    assert state["config"] == {
        "applied": 1,
        "applied_at": applied_at.isoformat(),
        "latest": 2,
        "master_version": 1,
        "master_applied": 1,
        "ready": True,
        "differ_seconds": None,
        "drift": False,
    }


async def test_where_the_app_cannot_see_the_hosts_interfaces_the_agent_says(settings, monkeypatch):
    """As under rootless Podman: `ip` in the container fails (or sees the container's own
    interfaces), the agent on the host answers."""

    def no_ip(address: str) -> bool:
        raise vip.VipCheckError("ip: not found")

    monkeypatch.setattr(status, "vip_held", no_ip)
    async with fake_agent({"status": AGENT_STATUS, "vip_held": True}) as agent:
        state = await status.node_status(node(settings, agent), AgentClient(agent.path))
    assert state["vip"] == {"address": HELD_VIP, "held": True}
    assert agent.args("vip_held") == [{"vip": HELD_VIP}]


async def test_a_passive_node_reports_no_replication_lag(settings):
    """Its runs are from when it was active: a lag from them would be a false alarm."""
    await sync_run("a", 3600, "ok")
    async with fake_agent({"status": AGENT_STATUS}) as agent:
        passive = node(settings, agent, vip_address=NOT_HELD_VIP)
        state = await status.node_status(passive, AgentClient(agent.path))
    assert state["vip"]["held"] is False
    assert state["sync"]["last_ok"]["outcome"] == "ok"
    assert state["sync"]["lag_seconds"] is None
    assert (
        state["sync"]["unknown"] == "this node does not hold the VIP: its queue is not replicated"
    )


async def test_a_slave_reports_the_master_version_it_runs(settings):
    number = await service.replace_all(
        pull.ACTOR, snap.empty(), pull.ACTION, pull.COMMENT.format(7)
    )
    await applied("b", number)
    async with fake_agent({"status": AGENT_STATUS}) as agent:
        slave = node(settings, agent, node_id="b", cluster_mode="slave")
        config = (await status.node_status(slave, AgentClient(agent.path)))["config"]
        assert (config["applied"], config["master_version"]) == (number, 7)

        await AppliedVersion.delete(force=True)
        await applied("b", await service.add_domain(service.Actor("local"), "example.com"))
        config = (await status.node_status(slave, AgentClient(agent.path)))["config"]
    assert config["master_version"] is None
    assert config["unknown"] == "the applied version did not come from the master"


async def test_a_busy_agent_costs_at_most_the_agent_timeout(settings, tmp_path):
    """The agent runs one verb at a time: behind a long queue sync, its status must not hold
    the dashboard (nor the peer asking for this status) for longer than AGENT_TIMEOUT."""
    path = tmp_path / "busy.sock"

    async def never_answers(reader: Any, writer: Any) -> None:
        await reader.readline()
        await asyncio.sleep(60)

    server = await asyncio.start_unix_server(never_answers, path=str(path))
    try:
        started = time.monotonic()
        busy = dataclasses.replace(settings, node_id="a", vip_address=None, agent_socket=path)
        state = await status.node_status(busy, AgentClient(path))
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert elapsed < status.AGENT_TIMEOUT + 1
    assert state["queue"]["unknown"].startswith("the agent did not answer within 2 s")


# -- the peer -----------------------------------------------------------------------------------


@pytest.fixture
async def peer_b(settings):
    """Node b, the slave, over HTTPS: the real app with b's settings and b's own (fake) agent.
    It is passive: the VIP is not on it."""
    async with fake_agent({"status": PEER_AGENT_STATUS}) as agent:
        b = passive_slave(settings, agent.path)
        async with serve_https(create_app(b), b) as https:
            https.agent = agent  # type: ignore[attr-defined]
            yield https


async def test_the_peers_status_comes_over_its_api(settings, peer_b):
    await vrrp("a", "BACKUP", "MASTER")
    await vrrp("b", "BACKUP")
    await sync_run("a", 5, "ok")
    token = await tokens.create("a-to-b", "cluster", "test")
    async with fake_agent({"status": AGENT_STATUS}) as agent:
        a = peer_settings(node(settings, agent), peer_b, token)
        view = await status.cluster_view(a, AgentClient(agent.path))

    assert view["this"]["node_id"] == "a" and view["this"]["vrrp"]["state"] == "MASTER"
    assert view["peer"]["reachable"] is True
    b = view["peer"]["status"]
    assert (b["node_id"], b["cluster_mode"]) == ("b", "slave")
    assert b["vrrp"]["state"] == "BACKUP"
    assert b["vip"] == {"address": NOT_HELD_VIP, "held": False}
    # b's agent answered b's queue and replica: the replica against a's live queue.
    assert (b["queue"]["messages"], b["queue"]["replica_files"]) == (1, 7)
    assert (view["this"]["queue"]["messages"], view["this"]["queue"]["replica_files"]) == (7, 5)
    assert b["sync"]["lag_seconds"] is None and view["this"]["sync"]["lag_seconds"] >= 4.5
    assert view["vip_owners"] == ["a"]
    assert peer_b.agent.verbs == ["status"]


async def test_an_unreachable_peer_is_said_within_seconds(settings, peer_b):
    async with fake_agent({"status": AGENT_STATUS}) as agent:
        a = node(settings, agent)
        assert await status.peer_status(a) == {
            "reachable": False,
            "error": "not configured: PEER_API_URL, PEER_API_TOKEN and PEER_CERT_FINGERPRINT "
            "are not all set",
        }
        cluster = await tokens.create("a-to-b", "cluster", "test")
        read = await tokens.create("a-reads-b", "read", "test")

        refused = await status.peer_status(peer_settings(a, peer_b, read))
        assert refused["error"] == "unreachable: the peer refused PEER_API_TOKEN (HTTP 403)"

        # Pinned by its public key (which a renewal with the same key keeps): recognised.
        by_key = dataclasses.replace(peer_b, fingerprint=peer_b.key_fingerprint)
        assert (await status.peer_status(peer_settings(a, by_key, cluster)))["reachable"] is True

        stranger = dataclasses.replace(peer_b, fingerprint="AB" * 32)
        wrong = await status.peer_status(peer_settings(a, stranger, cluster))
        assert wrong["error"].startswith("unreachable: the server's certificate (SHA-256 ")
        assert "is not the pinned PEER_CERT_FINGERPRINT" in wrong["error"]

        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            closed = f"https://127.0.0.1:{free.getsockname()[1]}"
        gone = await status.peer_status(
            peer_settings(a, dataclasses.replace(peer_b, url=closed), cluster)
        )
        assert gone["error"].startswith(f"unreachable: cannot reach the peer at {closed}/api/")

        # A peer that accepts the connection and then says nothing (hung, or a black hole).
        silent = await asyncio.start_server(lambda r, w: asyncio.sleep(60), "127.0.0.1", 0)
        hung = f"https://127.0.0.1:{silent.sockets[0].getsockname()[1]}"
        started = time.monotonic()
        mute = await status.peer_status(
            peer_settings(a, dataclasses.replace(peer_b, url=hung), cluster)
        )
        elapsed = time.monotonic() - started
        silent.close()
    assert mute["reachable"] is False and mute["error"].startswith("unreachable: ")
    assert elapsed < status.PEER_TIMEOUT + 1
    assert peer_b.agent.verbs == ["status"]  # only the request pinned by b's key reached it


async def test_a_certificate_renewed_on_disk_but_not_yet_served_is_the_one_judged(
    settings, tmp_path, monkeypatch
):
    """An ACME client renews TLS_CERT_FILE in place; the server presents the old one until it
    restarts. The file's date kept the alert and /metrics quiet while browsers, Prometheus and
    the peer met the old certificate's end."""
    monkeypatch.setattr(health, "SERVED_CHECK_SECONDS", 0.0)
    async with serve_https(create_app(settings), settings) as https:
        port = int(https.url.rsplit(":", 1)[1])
        monkeypatch.setattr(tls, "LIFETIME", dt.timedelta(days=900))
        renewed, key, _ = tls.ensure_certificate(
            dataclasses.replace(settings, state_dir=tmp_path, tls_cert_file=None, tls_key_file=None)
        )
        node = dataclasses.replace(
            settings, tls_cert_file=renewed, tls_key_file=key, https_host="::", https_port=port
        )
        facts = await asyncio.to_thread(health.host_facts, node)
    days = health.days_left(facts["tls_cert_not_after"], dt.datetime.now(dt.UTC))
    assert days is not None and 824 < days < 826  # served: 825 days; on disk: 900
    assert facts["tls_cert_restart_needed"] is True
    # Nothing answers on the port any more: the file is what there is to judge.
    facts = await asyncio.to_thread(health.host_facts, node)
    assert "tls_cert_restart_needed" not in facts
    assert 899 < health.days_left(facts["tls_cert_not_after"], dt.datetime.now(dt.UTC)) < 901
