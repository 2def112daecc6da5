"""The queue-sync job's own logic against the real PostgreSQL: the VIP check, the lease, the
sync_runs record and SYNC_FLUSH.

The agent here is a stand-in on a unix socket that answers `queue_sync` with a report, because
freezing Postfix and rsync over ssh into a peer need the two-node lab: tests/lab runs the real
agent for those. The VIP is 127.0.0.1 (on this machine's loopback, so "held") or an address of
the test range no interface has (so "not held").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.agent.client import AgentClient
from app.cluster import locks, queuesync
from app.db.tables import SyncRun

HELD_VIP = "127.0.0.1"
NOT_HELD_VIP = "198.18.255.254"


class ScriptedAgent:
    """Answers each verb with the result a test scripted for it and records the calls."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mr-sync-"))  # short: unix socket paths
        self.path = self.folder / "agent.sock"
        self.results = results
        self.verbs: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = json.loads(await reader.readline())
        self.verbs.append(request["verb"])
        result = self.results.get(request["verb"])
        answer = (
            {"ok": True, "result": result}
            if result is not None
            else {"ok": False, "error": f"unknown verb {request['verb']}"}
        )
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
        writer.close()


REPORT = {"ok": True, "freeze_seconds": 0.25, "files": 12, "bytes": 34567}


@pytest.fixture
async def agent() -> AsyncIterator[ScriptedAgent]:
    stub = ScriptedAgent({"queue_sync": REPORT, "flush_all": {"flushed": True}})
    server = await asyncio.start_unix_server(stub.handle, path=str(stub.path))
    yield stub
    server.close()
    await server.wait_closed()
    shutil.rmtree(stub.folder, ignore_errors=True)


def node(settings: Any, vip: str = HELD_VIP, flush: bool = False) -> Any:
    return dataclasses.replace(
        settings, vip_address=vip, peer_node_ip="198.18.0.12", node_id="a", sync_flush=flush
    )


async def run(settings: Any, agent: ScriptedAgent) -> queuesync.SyncResult:
    return await queuesync.run_once(settings, AgentClient(agent.path, timeout=10), "freeze")


async def test_a_node_without_the_vip_does_nothing_and_records_nothing(settings, agent):
    result = await run(node(settings, NOT_HELD_VIP), agent)
    assert result.outcome == "skipped"
    assert agent.verbs == []
    assert await SyncRun.count() == 0


async def test_the_vip_owner_syncs_records_the_run_and_releases_the_lease(settings, agent):
    result = await run(node(settings), agent)
    assert result.outcome == "ok", result.detail
    assert agent.verbs == ["queue_sync"]  # SYNC_FLUSH is off by default: no postqueue -f
    [row] = await SyncRun.select()
    assert (row["outcome"], row["node_id"], row["peer"], row["freeze_mode"]) == (
        "ok",
        "a",
        "198.18.0.12",
        "freeze",
    )
    assert (row["files"], row["bytes"], row["freeze_seconds"]) == (12, 34567, 0.25)
    assert row["fencing_token"] is not None and row["duration_seconds"] > 0
    # Released: the next holder gets the lease at once.
    lease = await locks.acquire(queuesync.LOCK, "someone-else", ttl_seconds=5)
    assert lease.fencing_token > row["fencing_token"]


async def test_sync_flush_runs_postqueue_f_after_a_successful_copy_only(settings, agent):
    assert (await run(node(settings, flush=True), agent)).outcome == "ok"
    assert agent.verbs == ["queue_sync", "flush_all"]

    agent.verbs.clear()
    agent.results["queue_sync"] = {"ok": False, "error": "rsync: connection refused"}
    result = await run(node(settings, flush=True), agent)
    assert result.outcome == "failed" and "connection refused" in result.detail
    assert agent.verbs == ["queue_sync"]


async def test_a_second_run_on_this_node_at_the_same_time_is_a_conflict(settings, agent):
    """A manual run, or a switchover's final sync, while the timer's run copies."""
    other_run = subprocess.Popen(["sleep", "60"])
    try:
        await locks.acquire(queuesync.LOCK, f"a-queue-sync-{other_run.pid}", ttl_seconds=60)
        result = await run(node(settings), agent)
    finally:
        other_run.kill()
        other_run.wait()
    assert result.outcome == "conflict"
    assert agent.verbs == []


async def test_the_lease_of_a_run_that_was_killed_is_taken_over_at_once(settings, agent):
    killed = subprocess.Popen(["sleep", "60"])
    killed.kill()
    killed.wait()
    await locks.acquire(queuesync.LOCK, f"a-queue-sync-{killed.pid}", ttl_seconds=120)
    result = await run(node(settings), agent)
    assert result.outcome == "ok", result.detail
    assert agent.verbs == ["queue_sync"]


async def test_a_held_lease_aborts_the_run_and_is_recorded(settings, agent):
    await locks.acquire(queuesync.LOCK, "a-queue-sync-other-run", ttl_seconds=60)
    result = await run(node(settings), agent)
    assert result.outcome == "conflict"
    assert agent.verbs == []
    [row] = await SyncRun.select()
    assert row["outcome"] == "conflict" and "a-queue-sync-other-run" in row["detail"]


async def test_an_unreachable_agent_is_a_failed_run_and_frees_the_lease(settings, agent):
    gone = AgentClient(agent.folder / "nothing.sock", timeout=5)
    result = await queuesync.run_once(node(settings), gone, "freeze")
    assert result.outcome == "failed" and "not reachable" in result.detail
    [row] = await SyncRun.select()
    assert row["outcome"] == "failed"
    await locks.acquire(queuesync.LOCK, "next-run", ttl_seconds=5)
