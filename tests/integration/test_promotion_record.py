"""A promotion is written together with what it took over, and only then does the node tell a
returning peer which of its queue IDs it took: asked earlier, it would name too few, and the
peer would deliver the rest a second time.

Against the real PostgreSQL and the app's real HTTP stack; the agent is a fake on a unix socket
(the real import is tested in test_replica_import.py and test_shadow_postfix.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from app.agent.client import AgentClient
from app.auth import tokens
from app.cluster import status
from app.cluster.vrrp_table import VrrpEvent
from app.db.tables import Promotion, QueueImport
from app.replication import promotion
from tests.clusterpeer import HELD_VIP, NOT_HELD_VIP, Refusal, fake_agent
from tests.integration.test_backup import rows, scratch_databases  # noqa: F401 (fixture)
from tests.integration.test_baseline_migration import piccolo
from tests.oldchain import PROMOTIONS_ID, ROOM_ID

REPLICA = ["4dLq2G1xZ9z9vxA", "4dLq2G1xZ9z9vxB"]
SHADOW = "4dLq2G1xZ9z9vxS"


def answer(imported: list[str], shadows: list[str]) -> dict[str, Any]:
    return {
        "imported": imported,
        "refused": [],
        "refused_total": 1,
        "incomplete": 0,
        "shadows": {"imported": shadows, "refused": [], "refused_total": 0, "incomplete": 0},
    }


async def became(node_id: str, state: str) -> dt.datetime:
    """keepalived's event as the reader records it; its time is what the promotion gets."""
    at = dt.datetime.now(dt.UTC)
    await VrrpEvent.insert(
        VrrpEvent(at=at, node_id=node_id, instance="VI_MAIL", state=state, priority=100)
    )
    return at


async def imported(client: Any) -> Any:
    """What node b's reconcile asks for, with a cluster token."""
    if "authorization" not in client.headers:
        token = await tokens.create("b-to-a", "cluster", "test")
        client.headers["authorization"] = f"Bearer {token}"
    return await client.get("/api/queue/imported")


async def test_the_peer_is_told_what_was_taken_over_only_once_it_is_written(client, app):
    node_id = app.state.settings.node_id
    master_at = await became(node_id, "MASTER")
    # The agent has imported (it answers again), the rows are not written yet: not yet.
    early = await imported(client)
    assert early.status_code == 503
    assert early.json()["error"] == "importing"
    assert (await status.vrrp_state(node_id))["promotion"] is None

    async with fake_agent({"import_replica": answer(REPLICA, [SHADOW])}) as agent:
        took = await promotion.run_once(node_id, AgentClient(agent.path), master_at, "MASTER 100")
    assert took == [*REPLICA, SHADOW]

    late = await imported(client)
    assert late.status_code == 200
    assert late.json() == {"queue_ids": sorted([*REPLICA, SHADOW])}
    written = (await status.vrrp_state(node_id))["promotion"]
    assert {k: written[k] for k in ("imported", "refused", "error")} == {
        "imported": 3,
        "refused": 1,
        "error": "",
    }
    [row] = await Promotion.select()
    assert row["master_at"] == master_at and row["node_id"] == node_id


async def test_a_promotion_of_an_earlier_master_period_does_not_answer_for_this_one(client, app):
    node_id = app.state.settings.node_id
    first = await became(node_id, "MASTER")
    async with fake_agent({"import_replica": answer(REPLICA, [])}) as agent:
        await promotion.run_once(node_id, AgentClient(agent.path), first, "MASTER 100")
    await became(node_id, "BACKUP")
    # Not MASTER: what it took over the last time is the answer.
    assert (await imported(client)).json() == {"queue_ids": REPLICA}
    await became(node_id, "MASTER")
    assert (await imported(client)).status_code == 503


async def test_a_failed_takeover_is_written_and_the_peer_is_told_why(client, app):
    """The peer keeps its mail held and its dashboard shows the reason, rather than releasing
    mail this node may have taken over in part."""
    node_id = app.state.settings.node_id
    master_at = await became(node_id, "MASTER")
    async with fake_agent({"import_replica": Refusal("the replica is not a directory")}) as agent:
        took = await promotion.run_once(node_id, AgentClient(agent.path), master_at, "MASTER 100")
    assert took == []
    refused = await imported(client)
    assert refused.status_code == 503
    assert refused.json()["error"] == "import failed"
    assert "the replica is not a directory" in refused.json()["detail"]
    assert (await status.vrrp_state(node_id))["promotion"]["error"]


async def test_a_takeover_that_stopped_part_way_keeps_what_it_took_for_the_peer(client, app):
    """A sendmail failed after the replica and a shadow went in: those are written, the peer
    keeps its mail held, and the try that finishes (the reader's restart) adds the rest."""
    node_id = app.state.settings.node_id
    master_at = await became(node_id, "MASTER")
    why = "injecting the shadow of 4dLq2G1xZ9z9vxT failed: sendmail failed"
    stopped = answer(REPLICA, [SHADOW]) | {"error": why}
    async with fake_agent({"import_replica": stopped}) as agent:
        took = await promotion.run_once(node_id, AgentClient(agent.path), master_at, "MASTER 100")
    assert took == [*REPLICA, SHADOW]
    held = await imported(client)
    assert held.status_code == 503 and held.json()["error"] == "import failed"
    assert held.json()["detail"].endswith(f"the takeover stopped before its end: {why}")
    rows = await QueueImport.select(QueueImport.original_queue_id)
    assert sorted(r["original_queue_id"] for r in rows) == sorted([*REPLICA, SHADOW])
    async with fake_agent({"import_replica": answer([], ["4dLq2G1xZ9z9vxT"])}) as agent:
        await promotion.run_once(node_id, AgentClient(agent.path), master_at, "MASTER, again")
    everything = sorted([*REPLICA, SHADOW, "4dLq2G1xZ9z9vxT"])
    assert (await imported(client)).json() == {"queue_ids": everything}


async def test_an_agent_that_does_not_answer_in_time_makes_a_failed_takeover(
    client, app, monkeypatch
):
    monkeypatch.setattr(promotion, "TAKEOVER_WAIT_SECONDS", 0.5)
    monkeypatch.setattr(promotion, "ASK_AGAIN_SECONDS", 0.05)
    node_id = app.state.settings.node_id
    master_at = await became(node_id, "MASTER")

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    with tempfile.TemporaryDirectory(prefix="mr-agent-") as folder:
        path = Path(folder) / "agent.sock"
        server = await asyncio.start_unix_server(never_answers, path=str(path))
        async with server:
            took = await promotion.run_once(
                node_id, AgentClient(path, timeout=0.2), master_at, "MASTER 100"
            )
    assert took == []
    refused = (await imported(client)).json()
    assert refused["detail"] == (
        "this node's takeover of the peer's queue failed: importing the replica failed: "
        "the agent did not answer within 0.5 s"
    )


async def test_a_takeover_that_outlasts_the_clients_wait_is_asked_again_and_recorded_whole(
    client, app, monkeypatch
):
    """The client stops reading after its timeout; the agent goes on. Asked again for the same
    takeover, it runs that try after the first and answers with what the first took: all of
    it is recorded, and the takeover is not written as failed."""
    monkeypatch.setattr(promotion, "ASK_AGAIN_SECONDS", 0.05)
    node_id = app.state.settings.node_id
    master_at = await became(node_id, "MASTER")
    tries: list[str] = []

    async def slow_then_whole(args: dict[str, Any]) -> dict[str, Any]:
        tries.append(args["takeover"])
        if len(tries) == 1:
            await asyncio.sleep(1)  # longer than the client reads
            return answer(REPLICA, [SHADOW])
        return answer([], []) | {"earlier": sorted([*REPLICA, SHADOW])}

    async with fake_agent({"import_replica": slow_then_whole}) as agent:
        took = await promotion.run_once(
            node_id, AgentClient(agent.path, timeout=0.3), master_at, "MASTER 100"
        )
    assert tries == [promotion.takeover_key(master_at)] * 2
    assert sorted(took) == sorted([*REPLICA, SHADOW])
    assert (await imported(client)).json() == {"queue_ids": sorted([*REPLICA, SHADOW])}
    [row] = await Promotion.select()
    assert (row["imported"], row["error"]) == (3, "")


async def test_after_a_reboot_a_takeover_left_unwritten_is_written_as_failed(client, app):
    """The node went down (or its reader stopped while keepalived moved on) between MASTER and
    writing the takeover: the queue IDs went with the process. The next reader says so, rather
    than leave the peer waiting for a promotion that never comes; a MASTER it reads itself is
    its own to promote."""
    node_id = app.state.settings.node_id
    interrupted = await became(node_id, "MASTER")
    started = dt.datetime.now(dt.UTC)
    await became(node_id, "MASTER")  # read by the new reader: its promotion is under way

    async with fake_agent({"import_replica": answer(REPLICA, [])}) as agent:
        # keepalived still says MASTER, but the VIP is not here: no second try.
        await promotion.resume(node_id, started, AgentClient(agent.path), NOT_HELD_VIP)
        await promotion.resume(node_id, started, None, HELD_VIP)  # no state file: a reboot
    assert agent.verbs == []

    [row] = await Promotion.select()
    assert (row["master_at"], row["error"]) == (interrupted, promotion.INTERRUPTED)
    answer_now = await imported(client)  # the new MASTER's own takeover is still running
    assert (answer_now.status_code, answer_now.json()["error"]) == (503, "importing")


async def test_a_reader_restarted_on_the_active_node_tries_a_failed_takeover_again(client, app):
    """The takeover failed (the agent was down); once the cause is fixed, restarting the reader
    takes the replica over: the node still reports MASTER and holds the VIP."""
    node_id = app.state.settings.node_id
    master_at = await became(node_id, "MASTER")
    async with fake_agent({"import_replica": Refusal("the agent is not ready")}) as agent:
        await promotion.run_once(node_id, AgentClient(agent.path), master_at, "MASTER 100")
    assert (await imported(client)).json()["error"] == "import failed"

    async with fake_agent({"import_replica": answer(REPLICA, [])}) as agent:
        await promotion.resume(node_id, dt.datetime.now(dt.UTC), AgentClient(agent.path), HELD_VIP)
    # The same takeover, by the time read back from the database: the agent's journal of the
    # first try is found again.
    assert agent.args("import_replica") == [{"takeover": promotion.takeover_key(master_at)}]
    assert (await imported(client)).json() == {"queue_ids": REPLICA}
    assert [row["error"] == "" for row in await Promotion.select()] == [False, True]


async def test_a_reader_that_starts_after_a_written_takeover_or_as_backup_does_nothing(app):
    node_id = app.state.settings.node_id
    master_at = await became(node_id, "MASTER")
    async with fake_agent({"import_replica": answer(REPLICA, [])}) as agent:
        path = agent.path
        await promotion.run_once(node_id, AgentClient(path), master_at, "MASTER 100")
        await promotion.resume(node_id, dt.datetime.now(dt.UTC), AgentClient(path), HELD_VIP)
        await became(node_id, "BACKUP")
        await promotion.resume(node_id, dt.datetime.now(dt.UTC), AgentClient(path), HELD_VIP)
    assert agent.verbs == ["import_replica"]
    assert [row["error"] for row in await Promotion.select()] == [""]


async def test_the_takeover_is_written_once_the_database_is_back(app, monkeypatch):
    """Its queue IDs exist only in the reader's memory until written: an outage is waited out."""
    node_id = app.state.settings.node_id
    master_at = await became(node_id, "MASTER")
    monkeypatch.setattr(promotion, "_RETRY_SECONDS", (0.05,))
    real_insert = Promotion.insert
    failures = []

    def failing_insert(*rows: Any) -> Any:
        if len(failures) < 2:
            failures.append(1)
            raise ConnectionRefusedError("the database is down")
        return real_insert(*rows)

    monkeypatch.setattr(Promotion, "insert", failing_insert)
    async with fake_agent({"import_replica": answer(REPLICA, [])}) as agent:
        await asyncio.wait_for(
            promotion.run_once(node_id, AgentClient(agent.path), master_at, "MASTER 100"), 10
        )
    assert len(failures) == 2
    # The failed tries wrote nothing: the queue IDs went in once, with their promotion.
    assert sorted(row["original_queue_id"] for row in await QueueImport.select()) == REPLICA
    assert await Promotion.count() == 1


async def test_a_node_that_is_master_while_it_is_upgraded_counts_as_promoted(
    scratch_databases,  # noqa: F811
):
    """Its promotion ran before promotions were written: the migration writes it, or the
    returning peer would wait for one that never comes. Only a node whose last state is
    MASTER gets one."""
    url = scratch_databases("promotions_upgrade")
    before = piccolo(url, "forwards", "mailrelay", f"--migration_id={ROOM_ID}")
    assert before.returncode == 0, before.stdout
    now = dt.datetime.now(dt.UTC)
    connection = await asyncpg.connect(url)
    try:
        await connection.executemany(
            "INSERT INTO vrrp_events (at, node_id, state) VALUES ($1, $2, $3)",
            [
                (now - dt.timedelta(hours=3), "a", "BACKUP"),
                (now - dt.timedelta(hours=2), "b", "MASTER"),
                (now - dt.timedelta(hours=1), "a", "MASTER"),
                (now - dt.timedelta(minutes=5), "b", "BACKUP"),
            ],
        )
        await connection.executemany(
            "INSERT INTO queue_imports (node_id, original_queue_id, imported_at) "
            "VALUES ('a', $1, $2)",
            [("older", now - dt.timedelta(days=2)), ("x", now - dt.timedelta(minutes=59))],
        )
    finally:
        await connection.close()

    up = piccolo(url, "forwards", "mailrelay", f"--migration_id={PROMOTIONS_ID}")

    assert up.returncode == 0, up.stdout
    [row] = await rows(url, "promotions")
    assert (row["node_id"], row["master_at"], row["imported"], row["error"]) == (
        "a",
        now - dt.timedelta(hours=1),
        1,
        "",
    )
