"""Pieces for the cluster tests: a peer node's API over real HTTPS, and a fake agent.

serve_https() serves an ASGI app (the real app with another node's settings, or a small stand-in)
on 127.0.0.1 in the test's own event loop, with a self-signed certificate that this node pins,
exactly as the nodes call each other. FakeAgent answers the agent's verbs on a unix socket with
what a test scripted and records every request with its arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from app.settings import Settings
from app.tls import ensure_certificate, fingerprint, key_fingerprint

HELD_VIP = "127.0.0.1"  # on this machine's loopback: "held"
NOT_HELD_VIP = "198.18.255.254"  # in the test range, on no interface: "not held"


@dataclass
class Https:
    url: str
    fingerprint: str
    key_fingerprint: str = ""  # the pin of its public key, which a renewal keeps


@contextlib.asynccontextmanager
async def serve_https(app: Any, settings: Settings) -> AsyncIterator[Https]:
    """The app over HTTPS on a free port. Lifespan hooks stay off: the tests' app fixture owns
    the database pool, which both nodes share here (each node's rows carry its node_id)."""
    folder = Path(tempfile.mkdtemp(prefix="mailrelay-peer-"))
    cert, key, _ = ensure_certificate(
        dataclasses.replace(settings, state_dir=folder, tls_cert_file=None, tls_key_file=None)
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            lifespan="off",
            log_level="warning",
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "the HTTPS server did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Https(f"https://127.0.0.1:{port}", fingerprint(cert), key_fingerprint(cert))
    finally:
        server.should_exit = True
        await task
        shutil.rmtree(folder, ignore_errors=True)


def passive_slave(settings: Settings, agent_socket: Path) -> Settings:
    """Node b's settings: the slave, without the VIP, with its own agent."""
    return dataclasses.replace(
        settings,
        node_id="b",
        cluster_mode="slave",
        vip_address=NOT_HELD_VIP,
        agent_socket=agent_socket,
    )


def peer_settings(settings: Settings, peer: Https, token: str, **changes: Any) -> Settings:
    """A node's settings that point at `peer` (pinned) with a token."""
    return dataclasses.replace(
        settings,
        peer_api_url=peer.url,
        peer_api_token=token,
        peer_cert_fingerprint=peer.fingerprint,
        **changes,
    )


class FakeAgent:
    """Answers each verb with its scripted result (a callable, or a coroutine function, gets the
    request's arguments);
    a verb without one is refused like an unknown verb. Records every request."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mr-agent-"))  # short: unix socket paths
        self.path = self.folder / "agent.sock"
        self.results = results
        self.requests: list[dict[str, Any]] = []

    @property
    def verbs(self) -> list[str]:
        return [request["verb"] for request in self.requests]

    def args(self, verb: str) -> list[dict[str, Any]]:
        return [request["args"] for request in self.requests if request["verb"] == verb]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = json.loads(await reader.readline())
        self.requests.append(request)
        if request["verb"] in self.results:
            result = self.results[request["verb"]]
            result = result(request["args"]) if callable(result) else result
            if asyncio.iscoroutine(result):  # an agent that takes its time
                result = await result
            answer = (
                {"ok": False, "error": result.error}
                if isinstance(result, Refusal)
                else {"ok": True, "result": result}
            )
        else:
            answer = {"ok": False, "error": f"unknown verb {request['verb']!r}"}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
        writer.close()


@dataclass
class Refusal:
    """A scripted error answer of the agent."""

    error: str


@contextlib.asynccontextmanager
async def fake_agent(results: dict[str, Any]) -> AsyncIterator[FakeAgent]:
    agent = FakeAgent(results)
    server = await asyncio.start_unix_server(agent.handle, path=str(agent.path))
    try:
        yield agent
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(agent.folder, ignore_errors=True)


AGENT_STATUS = {
    "postfix_running": True,
    "postfix_version": "3.7.11",
    "live_maps_version": 3,
    "queue": {"incoming": 1, "active": 2, "deferred": 4, "hold": 0, "maildrop": 0},
    "replica": {"files": 5, "bytes": 12345},
    "shadow": {
        "stored": 2,
        "bytes": 900,
        "unprotected_total": 3,
        "last_unprotected_at": None,
        "milter": "answering",
    },
}
