"""Both nodes' traffic on the dashboard, and which node logged what in message tracking.

Node a is the app under test on the test database; node b is a second real app, `mailrelay
serve` in a process of its own on a database of its own (tests/nodeprocess.py), asked over the
pinned HTTPS peer API with a cluster token, as the nodes ask each other. Each node logs only its
own Postfix, so each has its own log tables here too. The agents are fakes on unix sockets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from app.agent.client import AgentClient
from app.auth import tokens
from app.cluster import status
from app.db.tables import MailLog
from tests.clusterpeer import (
    AGENT_STATUS,
    FakeAgent,
    Https,
    fake_agent,
    peer_settings,
    serve_https,
)
from tests.conftest import PASSWORD, _hash, login
from tests.integration.test_dashboard import figures
from tests.nodeprocess import Server, serve_node

HTMX = {"hx-request": "true"}
NOW = dt.datetime.now(dt.UTC)


def queue(deferred: int) -> dict[str, Any]:
    return AGENT_STATUS | {
        "queue": {"incoming": 0, "active": 0, "deferred": deferred, "hold": 0, "maildrop": 0}
    }


@dataclass
class NodeB:
    server: Server
    agent: FakeAgent
    token: str  # b's cluster token for a


@pytest.fixture(scope="module")
async def node_b(pg_cluster: Any) -> AsyncIterator[NodeB]:
    """Node b with a longer retention than a's 14 days: a's dashboard asks for a's windows."""
    async with fake_agent({"status": queue(1)}) as agent:
        settings = {"NODE_ID": "b", "AGENT_SOCKET": str(agent.path), "RETENTION_DAYS": "30"}
        with serve_node(pg_cluster, "mailrelay_node_b", settings) as server:
            token = server.cli("create-token", "a-to-b", "--kind", "cluster")
            yield NodeB(server, agent, token)


async def b_sql(node: NodeB, sql: str, *args: Any) -> None:
    connection = await asyncpg.connect(node.server.database_url)
    try:
        await connection.execute(sql, *args)
    finally:
        await connection.close()


@pytest.fixture
async def two_nodes(app: Any, settings: Any, monkeypatch: Any, node_b: NodeB) -> AsyncIterator[Any]:
    """The app under test is node a, its peer b reachable; b's log starts empty."""
    await b_sql(node_b, "TRUNCATE mail_logs, rejection_logs, log_messages")
    node_b.agent.requests.clear()
    async with fake_agent({"status": queue(0)}) as agent_a:
        peer = Https(node_b.server.base_url, node_b.server.fingerprint())
        a = peer_settings(settings, peer, node_b.token, node_id="a")
        monkeypatch.setattr(app.state, "settings", a)
        monkeypatch.setattr(app.state, "agent", AgentClient(agent_a.path))
        yield a


async def failover_drill(node_b: NodeB) -> None:
    """Node a deferred 200 messages, then b took them over and delivered them; b also refused
    2 senders. b's copies have queue IDs of their own (the import sends them through pickup).
    And 20 days ago b delivered one more: inside b's 30 days, outside a's 14."""
    await MailLog.insert(
        *[
            MailLog(
                at=NOW - dt.timedelta(minutes=30),
                node_id="a",
                queue_id=f"A{n:04d}",
                sender="app@example.com",
                recipient=f"r{n}@dest.example",
                status="deferred",
                dsn="4.4.1",
            )
            for n in range(200)
        ]
    )
    rows = [(NOW - dt.timedelta(minutes=10), f"B{n:04d}", f"r{n}@dest.example") for n in range(200)]
    rows.append((NOW - dt.timedelta(days=20), "BOLD", "old@dest.example"))
    for at, queue_id, recipient in rows:
        await b_sql(
            node_b,
            "INSERT INTO mail_logs (at, node_id, queue_id, message_id, sender, recipient, relay,"
            " status, dsn, client) VALUES ($1, 'b', $2, '', 'app@example.com', $3,"
            " 'mx.dest.example[198.18.5.21]:25', 'sent', '2.0.0', '')",
            at,
            queue_id,
            recipient,
        )
    for n in range(2):
        await b_sql(
            node_b,
            "INSERT INTO rejection_logs (at, node_id, client, sender, recipient, reason, code)"
            " VALUES ($1, 'b', '198.18.5.40', $2, 'x@dest.example', 'not allowed', 553)",
            NOW - dt.timedelta(minutes=5),
            f"s{n}@blocked.example",
        )


async def test_the_dashboard_shows_both_nodes_side_by_side_with_a_total(
    login_as, two_nodes, node_b
):
    """The failover drill of issue 16: a's 200 deferrals stay deferral attempts in its windows,
    but a's dashboard no longer says they are deferred now: b delivered them."""
    await failover_drill(node_b)
    client = await login_as("readonly")
    fragment = (await client.get("/dashboard/traffic", headers=HTMX)).text

    assert fragment.startswith('<section id="traffic">') and "<html" not in fragment
    assert "hx-get" not in fragment  # asked once, not again and again
    assert "Node a" in fragment and "Node b" in fragment and "Deferral attempts" in fragment
    for period in ("1h", "24h"):
        assert figures(fragment, period, "this") == {
            "accepted": 200,
            "delivered": 0,
            "deferred": 200,
            "bounced": 0,
            "rejected": 0,
        }
        assert figures(fragment, period, "peer") == {
            "accepted": 200,
            "delivered": 200,
            "deferred": 0,
            "bounced": 0,
            "rejected": 2,
        }
        assert figures(fragment, period, "total") == {
            "accepted": 400,
            "delivered": 200,
            "deferred": 200,
            "bounced": 0,
            "rejected": 2,
        }
    # a's window is 14 days: b's delivery of 20 days ago is not in it, though b keeps 30 days.
    assert figures(fragment, "retention", "peer")["delivered"] == 200
    assert "last 14 days" in fragment
    deferred_now = fragment.split('id="deferred-now"')[1].split("</table>")[0]
    assert '<td class="this">0</td><td class="peer">1</td><td class="total">1</td>' in deferred_now
    assert node_b.agent.verbs == ["status"]  # b's deferred queue is b's agent's answer


async def test_the_dashboard_does_not_wait_for_the_peer(login_as, two_nodes, node_b):
    """The page shows this node's figures at once and asks for the peer's after it loaded; the
    link does the same without JavaScript, on a page of its own."""
    await failover_drill(node_b)
    client = await login_as("readonly")
    page = (await client.get("/")).text
    section = page.split('<section id="traffic"')[1].split("</section>\n</div>")[0]
    assert 'hx-get="/dashboard/traffic" hx-trigger="load" hx-swap="outerHTML"' in section
    assert '<a href="/dashboard/traffic">' in section
    assert figures(page, "1h", "this")["deferred"] == 200
    assert '<td class="peer">…</td>' in section
    assert node_b.agent.requests == []  # the page itself did not ask b

    plain = (await client.get("/dashboard/traffic")).text
    assert "<html" in plain and "<h1>Both nodes&#39; traffic</h1>" in plain
    assert figures(plain, "1h", "peer")["delivered"] == 200


async def test_the_dashboard_speaks_german_about_both_nodes(login_as, two_nodes, node_b):
    client = await login_as("readonly")
    fragment = (
        await client.get("/dashboard/traffic", headers=HTMX | {"accept-language": "de"})
    ).text
    for german in ("Zurückgestellte Versuche", "Gesamt", "Jetzt zurückgestellt", "Partner"):
        assert german in fragment
    assert "Jeder Knoten zählt, was sein eigenes Postfix protokolliert hat" in fragment


async def test_an_unreachable_peer_costs_the_dashboard_seconds_and_says_so(
    app, login_as, settings, monkeypatch
):
    """A peer that accepts the connection and never answers, and one that is not there: the
    dashboard renders at once, and its traffic fragment says why the peer's figures are missing
    within PEER_TIMEOUT, with this node's own figures and no total."""
    await MailLog.insert(
        MailLog(at=NOW - dt.timedelta(minutes=3), node_id="a", queue_id="Q1", status="sent")
    )
    token = await tokens.create("a-to-b", "cluster", "test")
    silent = await asyncio.start_server(lambda r, w: asyncio.sleep(60), "127.0.0.1", 0)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{free.getsockname()[1]}"
    client = await login_as("readonly")
    hung = f"https://127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    try:
        for url, why in ((hung, "no answer within 3 s"), (closed, "cannot reach the peer at")):
            peer = Https(url, "AB" * 32)
            monkeypatch.setattr(app.state, "settings", peer_settings(settings, peer, token))
            started = time.monotonic()
            page = (await client.get("/")).text
            assert time.monotonic() - started < 1.5, "the page waited for the peer"
            assert 'hx-get="/dashboard/traffic"' in page

            started = time.monotonic()
            fragment = (await client.get("/dashboard/traffic", headers=HTMX)).text
            assert time.monotonic() - started < status.PEER_TIMEOUT + 1
            unavailable = fragment.split('id="peer-traffic-unavailable"')[1].split("</p>")[0]
            assert "The peer&#39;s figures are unavailable: unreachable: " in unavailable
            assert why in unavailable
            assert figures(fragment, "1h", "this")["delivered"] == 1
            assert figures(fragment, "1h", "peer") == dict.fromkeys(figures(fragment, "1h"))
            assert figures(fragment, "1h", "total") == dict.fromkeys(figures(fragment, "1h"))
    finally:
        silent.close()


async def test_a_peer_answer_that_is_not_traffic_is_not_shown(settings, two_nodes, monkeypatch):
    """The peer's answer is untrusted: figures that are not counts make it unavailable."""
    bad = {"node_id": "b", "windows": [{"period": "1h", "accepted": -1}], "deferred_now": 0}

    async def stand_in(scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps(bad).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async with serve_https(stand_in, settings) as peer:
        answer = await status.peer_traffic(peer_settings(settings, peer, "t"), 14)
    assert answer == {
        "reachable": False,
        "error": "unreachable: the peer's answer is not its traffic",
    }


async def test_the_traffic_api_is_for_the_cluster_token_and_checks_its_window(client):
    read = await tokens.create("reader", "read", "test")
    cluster = await tokens.create("peer", "cluster", "test")
    refused = await client.get(
        status.TRAFFIC_PATH, params={"days": 14}, headers={"authorization": f"Bearer {read}"}
    )
    assert refused.status_code == 403
    for days in ("0", "3651", "x"):
        wrong = await client.get(
            status.TRAFFIC_PATH,
            params={"days": days},
            headers={"authorization": f"Bearer {cluster}"},
        )
        assert wrong.status_code == 400, days
    answer = await client.get(
        status.TRAFFIC_PATH, params={"days": 14}, headers={"authorization": f"Bearer {cluster}"}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert [w["period"] for w in body["windows"]] == ["1h", "24h", "retention"]
    assert body["retention_days"] == 14 and body["deferred_now"] is None
    assert "the privileged agent is not reachable" in body["unknown"]


async def test_tracking_says_which_node_logged_each_row_and_links_to_the_peers(
    login_as, two_nodes, node_b
):
    """a's tracking finds a's rows, each with its node; the link runs the same search in b's
    own tracking, which finds b's delivery of the same recipient."""
    await failover_drill(node_b)
    await b_sql(
        node_b,
        "INSERT INTO app_users (username, password_hash, role, must_change_password,"
        " failed_logins, created_at) VALUES ('reader', $1, 'readonly', false, 0, now())"
        " ON CONFLICT DO NOTHING",
        _hash(PASSWORD),
    )
    client = await login_as("readonly")
    results = (await client.get("/tracking?recipient=r7@dest.example")).text
    assert results.count('<tr class="deferred">') == 1 and '<tr class="sent">' not in results
    assert '<td class="node">a</td>' in results
    assert "Rows from the log of node a (this node)." in results
    link = results.split('id="peer-tracking" href="')[1].split('"')[0].replace("&amp;", "&")
    assert link.startswith(f"{node_b.server.base_url}/tracking?")
    assert "recipient=r7%40dest.example" in link

    # The node's self-signed certificate: the test checks the page, not the browser's trust.
    async with httpx.AsyncClient(base_url=node_b.server.base_url, verify=False) as b:  # noqa: S501
        assert (await login(b, "reader")).status_code == 303
        there = (await b.get(link)).text
    assert there.count('<tr class="sent">') == 1 and "B0007" in there
    assert '<td class="node">b</td>' in there


async def test_a_node_without_a_peer_says_where_the_peers_deliveries_are(login_as):
    await MailLog.insert(
        MailLog(at=NOW, node_id="a", queue_id="Q9", recipient="z@dest.example", status="sent")
    )
    results = (await (await login_as("readonly")).get("/tracking?recipient=z@dest.example")).text
    assert "Mail the peer delivered is in the peer&#39;s own log." in results
    assert 'id="peer-tracking"' not in results
