"""The agent runs on its own env file (agent.env: no DATABASE_URL, no web settings), reads it
through app.settings once at start, and refuses to start on a bad value, naming it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.agent.client import AgentClient, AgentRefused

ROOT = Path(__file__).resolve().parents[2]
PEER = "198.18.0.12"


def agent_env(folder: Path, **values: str) -> dict[str, str]:
    """What the agent's unit gives it: PATH, PYTHONPATH and agent.env's lines."""
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "AGENT_SOCKET": str(folder / "agent.sock"),
        "POSTFIX_MAPS_ROOT": str(folder / "maps"),
        **values,
    }


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mr-agentenv-"))  # short: unix socket paths
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    agent = subprocess.Popen(
        [sys.executable, "-m", "app.agent", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # The socket file appears at bind(), a moment before the agent listens on it.
    deadline = time.monotonic() + 30
    while agent.poll() is None and time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(env["AGENT_SOCKET"])
                break
            except OSError:
                time.sleep(0.05)
    return agent


def stop(agent: subprocess.Popen[bytes]) -> None:
    agent.terminate()
    agent.wait(timeout=10)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SYNC_PEER", "peer;reboot"), ("AGENT_SOCKET_MODE", "rw-rw----"), ("REPLICA_MAX_FILES", "0")],
)
def test_a_bad_agent_env_value_stops_the_agent_at_start_and_is_named(folder, variable, value):
    agent = start(agent_env(folder, **{variable: value}))
    try:
        assert agent.wait(timeout=30) == 1
    finally:
        if agent.poll() is None:
            stop(agent)
    assert agent.stderr is not None
    assert variable in agent.stderr.read().decode()
    assert not (folder / "agent.sock").exists()


async def test_queue_sync_uses_the_peer_and_pinned_key_from_the_agents_own_env(folder):
    known_hosts = folder / "known_hosts"
    known_hosts.write_text("198.18.0.99 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n")
    agent = start(agent_env(folder, SYNC_PEER=PEER, SYNC_KNOWN_HOSTS=str(known_hosts)))
    try:
        assert agent.poll() is None, agent.stderr and agent.stderr.read()
        report = await AgentClient(folder / "agent.sock", timeout=30).queue_sync("none")
    finally:
        stop(agent)
    assert not report["ok"]
    assert f"{known_hosts} pins no host key for the peer {PEER}" in report["error"]


async def test_a_node_without_a_peer_has_an_agent_that_refuses_only_the_sync(folder):
    agent = start(agent_env(folder))
    try:
        client = AgentClient(folder / "agent.sock", timeout=30)
        with pytest.raises(AgentRefused, match="SYNC_PEER is not set"):
            await client.queue_sync("none")
        assert await client.vip_held("198.18.9.100") is False
    finally:
        stop(agent)
