"""The agent's verbs are defined once (app/agent/protocol.py): the server answers exactly those,
the client has one method per verb that sends that verb, and the callers' allow-list names
only those and stays as strict as it was."""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.agent import callers, protocol, server
from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.agent.postfix import AgentError, PostfixTools
from app.agent.server import Agent
from app.postfix import pipeline, render
from app.settings import load_agent_settings

# Methods of the client that are not a verb of their own.
HELPERS = {"queue_action"}
SAMPLE_ARGS: dict[str, Any] = {
    "version": 1,
    "files": {"sender_access": b"example.org OK\n"},
    "limit": 10,
    "queue_id": "4dLq2G1xZ9z9vxL",
    "queue_ids": ["4dLq2G1xZ9z9vxL"],
    "freeze": "none",
    "vip": "198.18.0.100",
    "timeout": 5,
    "takeover": "2026-12-07T18:55:19.123456Z",
}


def client_methods() -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(AgentClient, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }


def test_the_server_answers_exactly_the_protocols_verbs():
    agent = Agent(PostfixTools(Path("/nonexistent"), Path("/nonexistent")), load_agent_settings({}))
    assert set(agent.verbs) == protocol.NAMES
    assert len(protocol.NAMES) == len(protocol.VERBS) == 18


def test_every_verb_has_a_client_method_and_every_method_is_a_verb():
    assert client_methods() - HELPERS == protocol.NAMES


class Recorder:
    """Listens where an agent would and writes down each request's verb and arguments."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mr-proto-"))  # short: unix socket paths
        self.path = self.folder / "agent.sock"
        self.requests: list[dict[str, Any]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = json.loads(await reader.readline())
        if "payload" in request:
            request["payload"] = await reader.readexactly(request["payload"])
        self.requests.append(request)
        writer.write(json.dumps({"ok": True, "result": None}).encode() + b"\n")
        await writer.drain()
        writer.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    made = Recorder()
    yield made
    shutil.rmtree(made.folder, ignore_errors=True)


async def test_each_client_method_sends_the_verb_it_is_named_after(recorder):
    server = await asyncio.start_unix_server(recorder.handle, path=str(recorder.path))
    client = AgentClient(recorder.path, timeout=5)
    try:
        for name in sorted(protocol.NAMES):
            method = getattr(client, name)
            # Keyword-only parameters (meanwhile) are the caller's, not the verb's.
            wanted = {
                name: param
                for name, param in inspect.signature(method).parameters.items()
                if param.kind is not param.KEYWORD_ONLY
            }
            await method(**{arg: SAMPLE_ARGS[arg] for arg in wanted if arg in SAMPLE_ARGS})
            request = recorder.requests[-1]
            assert request["verb"] == name
            assert set(request["args"]) == set(wanted), name
        # The maps go as their sizes and, after the line, their bytes as they are.
        await client.apply(3, {"sender_access": b"a.example\tOK\n", "sasl_passwd": b""})
        assert recorder.requests[-1] == {
            "verb": "apply",
            "args": {"version": 3, "files": {"sender_access": 13, "sasl_passwd": 0}},
            "payload": b"a.example\tOK\n",
        }
        await client.queue_action("requeue", "4dLq2G1xZ9z9vxL")
        assert recorder.requests[-1] == {"verb": "requeue", "args": {"queue_id": "4dLq2G1xZ9z9vxL"}}
    finally:
        server.close()
        await server.wait_closed()


async def test_a_queue_action_that_is_no_verb_is_refused_before_anything_is_sent():
    client = AgentClient(Path("/nonexistent/agent.sock"))
    with pytest.raises(AgentRefused, match="unknown verb 'status'"):
        await client.queue_action("status", "4dLq2G1xZ9z9vxL")


def test_the_allow_list_names_only_verbs_and_is_as_strict_as_before():
    granted = set().union(*callers.UNIT_VERBS.values(), callers.ADMIN, callers.WEB)
    assert granted <= protocol.NAMES
    reconcile = {"hold_all", "delete_ids", "release_ids", "flush_all"}
    queue = {"hold", "release", "delete", "requeue", "flush"}
    switchover = {"queue_sync", "vip_handover", "vip_held", "status"} | reconcile
    assert {
        "mailrelay-web.service": {"check", "apply", "queue_list"} | queue | switchover,
        "mailrelay-config-pull.service": {"check", "apply"},
        "mailrelay-queue-sync.service": {"queue_sync", "flush_all"},
        "mailrelay-vrrp-events.service": reconcile | {"import_replica"},
        "mailrelay-reconcile.service": reconcile,
        "mailrelay-alerts.service": {"status", "vip_held", "queue_list"},
    } == callers.UNIT_VERBS
    assert {"check", "apply"} | switchover == callers.ADMIN
    # No unit may reload Postfix by itself, and only root and the VRRP events import.
    assert "reload" not in granted
    assert {u for u, verbs in callers.UNIT_VERBS.items() if "import_replica" in verbs} == {
        "mailrelay-vrrp-events.service"
    }


def test_the_payload_is_cut_into_the_maps_by_their_sizes_in_order():
    args = {"version": 2, "files": {"b": 3, "a": 0, "c": 2}, server.PAYLOAD: b"bbbcc"}
    assert server._files(args) == (2, {"b": b"bbb", "a": b"", "c": b"cc"})


@pytest.mark.parametrize(
    "args",
    [
        {"version": 2, "files": {"a": 3}, server.PAYLOAD: b"aaaa"},  # one byte left over
        {"version": 2, "files": {"a": 3, "b": 2}, server.PAYLOAD: b"aaaa"},  # one short
        {"version": 2, "files": {"a": -1, "b": 5}, server.PAYLOAD: b"aaaa"},
        {"version": 2, "files": {"a": True}, server.PAYLOAD: b"a"},
        {"version": 2, "files": {"a": 1}, server.PAYLOAD: "a"},  # what JSON itself could send
        {"version": 2, "files": {"a": 1}},
    ],
)
def test_maps_whose_sizes_do_not_cut_the_payload_exactly_are_refused(args):
    with pytest.raises(AgentError, match="its size in the payload"):
        server._files(args)


async def _served(agent: Agent, request: bytes) -> bytes:
    """What the agent answers on one connection that sends `request` and closes."""
    folder = Path(tempfile.mkdtemp(prefix="mr-proto-"))
    listening = await asyncio.start_unix_server(
        agent.serve_connection, path=str(folder / "a.sock"), limit=server.MAX_REQUEST
    )
    try:
        reader, writer = await asyncio.open_unix_connection(str(folder / "a.sock"))
        writer.write(request)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        return answer
    finally:
        listening.close()
        await listening.wait_closed()
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_payload_of_no_size_the_agent_reads_drops_the_connection():
    agent = Agent(PostfixTools(Path("/nonexistent"), Path("/nonexistent")), load_agent_settings({}))
    for size in (-1, "5", server.MAX_REQUEST + 1, 10):  # 10: more than follows the line
        head = {"verb": "check", "args": {"version": 1, "files": {"a": 5}}, "payload": size}
        assert await _served(agent, json.dumps(head).encode() + b"\nhello") == b"", size
    # The same request with its size right is answered (and refused by the map checks).
    head = {"verb": "check", "args": {"version": 1, "files": {"a": 5}}, "payload": 5}
    answer = json.loads(await _served(agent, json.dumps(head).encode() + b"\nhello"))
    assert answer["ok"] is True
    assert answer["result"]["problems"][0]["key"].startswith("expected exactly the maps")


async def test_work_meanwhile_runs_after_the_request_and_ends_before_the_answer_returns(
    recorder,
):
    server = await asyncio.start_unix_server(recorder.handle, path=str(recorder.path))
    client = AgentClient(recorder.path, timeout=5)
    seen: list[str] = []

    async def meanwhile() -> None:
        seen.append("started")
        await asyncio.sleep(0.05)  # longer than the recorder takes to answer
        seen.append("ended")

    try:
        await client.check(3, {"sender_access": b"a.example\tOK\n"}, meanwhile=meanwhile)
        seen.append("answered")
        assert recorder.requests[-1]["payload"] == b"a.example\tOK\n"
    finally:
        server.close()
        await server.wait_closed()
    assert seen == ["started", "ended", "answered"]


async def test_the_diff_is_worked_out_when_the_agent_cannot_be_reached():
    maps = render.render(2, {"sender_domains": [], "trusted_networks": []}, str)
    report = pipeline.TestReport(2)
    with pytest.raises(AgentUnavailable):
        await pipeline.on_agent(report, maps, None, AgentClient(Path("/nonexistent/a.sock")).apply)
    assert "+++ version-2/mynetworks" in report.diff
