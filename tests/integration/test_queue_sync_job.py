"""The queue-sync job's own logic against the real PostgreSQL: the VIP check, the lease, the
sync_runs record and SYNC_FLUSH, and the job run as `mailrelay queue-sync` while this node's
database is down (DATABASE_URL on a closed port).

The agent here is a stand-in on a unix socket that answers `queue_sync` with a report, because
freezing Postfix and rsync over ssh into a peer need the two-node lab: tests/lab runs the real
agent for those. The VIP is 127.0.0.1 (on this machine's loopback, so "held") or an address of
the test range no interface has (so "not held").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.agent.client import AgentClient
from app.cluster import locks
from app.db.tables import SyncRun
from app.replication import queuesync

HELD_VIP = "127.0.0.1"
NOT_HELD_VIP = "198.18.255.254"


class ScriptedAgent:
    """Answers each verb with the result a test scripted for it and records the calls."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mr-sync-"))  # short: unix socket paths
        self.path = self.folder / "agent.sock"
        self.results = results
        self.verbs: list[str] = []
        # When set, a queue_sync answers only once this is set: a copy that lasts until the
        # test says, however slowly a second job starts on a busy machine.
        self.hold: asyncio.Event | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = json.loads(await reader.readline())
        self.verbs.append(request["verb"])
        if request["verb"] == "queue_sync" and self.hold is not None:
            await self.hold.wait()
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


# -- PostgreSQL down on this node ----------------------------------------------------------------

DATABASE_DOWN = "postgresql://nobody@127.0.0.1:1/none"


@dataclasses.dataclass
class Job:
    returncode: int
    stderr: str


async def job(agent: ScriptedAgent, state_dir: Path, database: str, vip: str = HELD_VIP) -> Job:
    """`mailrelay queue-sync` as its timer runs it, its stderr being the journal's stream."""
    log = state_dir / f"stderr-{os.urandom(4).hex()}"
    with log.open("w") as stderr:
        status = os.fstat(stderr.fileno())
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "queue-sync",
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={
                **os.environ,
                "DATABASE_URL": database,
                "VIP_ADDRESS": vip,
                "PEER_NODE_IP": "198.18.0.12",
                "NODE_ID": "a",
                "AGENT_SOCKET": str(agent.path),
                "STATE_DIR": str(state_dir),
                "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}",
            },
        )
        returncode = await asyncio.wait_for(process.wait(), timeout=60)
    return Job(returncode, log.read_text())


async def test_with_the_database_down_the_job_still_copies_and_warns_in_the_journal(
    agent, tmp_path
):
    result = await job(agent, tmp_path, DATABASE_DOWN)
    assert result.returncode == 0, result.stderr
    assert agent.verbs == ["queue_sync"]
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("<4>")]
    assert "the database is down" in warning and "the sync went on" in warning
    assert await SyncRun.count() == 0


async def test_runs_made_without_the_database_are_recorded_when_it_is_back(
    settings, agent, tmp_path
):
    for _ in range(2):
        assert (await job(agent, tmp_path, DATABASE_DOWN)).returncode == 0
    # The node lost the VIP meanwhile: it copies nothing, but records what it owes.
    result = await job(agent, tmp_path, os.environ["DATABASE_URL"], vip=NOT_HELD_VIP)
    assert result.returncode == 0, result.stderr
    assert agent.verbs == ["queue_sync", "queue_sync"]
    rows = await SyncRun.select().order_by(SyncRun.started_at)
    assert [(r["outcome"], r["files"], r["fencing_token"]) for r in rows] == [
        ("ok", 12, None),
        ("ok", 12, None),
    ]
    assert rows[0]["started_at"] < rows[1]["started_at"]
    assert not queuesync.spool_file(dataclasses.replace(settings, state_dir=tmp_path)).exists()

    # The database's lease is used again as soon as the database is there.
    assert (await job(agent, tmp_path, os.environ["DATABASE_URL"])).returncode == 0
    assert await SyncRun.count() == 3
    last = await SyncRun.select().order_by(SyncRun.started_at, ascending=False).first()
    assert last is not None and last["fencing_token"] is not None


async def test_two_runs_at_once_without_the_database_one_copies_the_other_conflicts(
    agent, tmp_path
):
    agent.hold = asyncio.Event()
    first = asyncio.create_task(job(agent, tmp_path, DATABASE_DOWN))
    for _ in range(200):  # until the first run holds the lock and copies
        if agent.verbs == ["queue_sync"] or first.done():
            break
        await asyncio.sleep(0.05)
    assert agent.verbs == ["queue_sync"], (await first).stderr if first.done() else "no copy"
    second = await job(agent, tmp_path, DATABASE_DOWN)
    assert second.returncode == 1 and "queue sync conflict" in second.stderr, second.stderr
    assert "locked by process" in second.stderr
    agent.hold.set()
    assert (await first).returncode == 0
    assert agent.verbs == ["queue_sync"]

    agent.hold = None
    assert (await job(agent, tmp_path, os.environ["DATABASE_URL"])).returncode == 0
    outcomes = [r["outcome"] for r in await SyncRun.select().order_by(SyncRun.started_at)]
    assert outcomes == ["ok", "conflict", "ok"]


async def test_two_runs_flushing_the_spool_at_once_record_each_run_exactly_once(
    settings, agent, tmp_path
):
    for _ in range(3):
        assert (await job(agent, tmp_path, DATABASE_DOWN)).returncode == 0
    # Two timer runs on a node that has lost the VIP: each finds the spooled runs and
    # records them while the other does the same.
    here = dataclasses.replace(node(settings, NOT_HELD_VIP), state_dir=tmp_path)
    results = await asyncio.gather(run(here, agent), run(here, agent))
    assert [r.outcome for r in results] == ["skipped", "skipped"]
    rows = await SyncRun.select(SyncRun.started_at, SyncRun.outcome)
    assert len({r["started_at"] for r in rows}) == len(rows) == 3
    assert not queuesync.spool_file(here).exists()
