"""The cluster panel and page, the status API, /metrics and the switchover form, over the app's
real HTTP stack and the real PostgreSQL.

Where a peer takes part, it is the real app with node b's settings over HTTPS in this test's
event loop (tests/clusterpeer.py), both nodes sharing the test database; agents are fakes on
unix sockets. The switchover's steps themselves are tested in test_cluster_switchover.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest

from app.agent.client import AgentClient
from app.auth import tokens
from app.cluster import metrics, status
from app.db.tables import AppliedVersion, AuditLog, MailLog, Promotion, SyncRun, VrrpEvent
from app.web.app import create_app
from app.web.i18n import GERMAN
from tests.clusterpeer import (
    AGENT_STATUS,
    HELD_VIP,
    NOT_HELD_VIP,
    fake_agent,
    passive_slave,
    peer_settings,
    serve_https,
)
from tests.conftest import csrf

ROOT = Path(__file__).resolve().parents[2]
HTMX = {"hx-request": "true"}


async def _history() -> dt.datetime:
    """Node a active (MASTER, syncing), node b passive; a runs config version 2. Now."""
    now = dt.datetime.now(dt.UTC)
    for node_id, states in (("a", ["BACKUP", "MASTER"]), ("b", ["BACKUP"])):
        for state in states:
            await VrrpEvent.insert(
                VrrpEvent(at=now, node_id=node_id, instance="VI_MAIL", state=state, priority=100)
            )
    for ago, outcome, duration in ((20, "ok", 0.25), (12, "conflict", 0.01), (5, "failed", 1.5)):
        await SyncRun.insert(
            SyncRun(
                started_at=now - dt.timedelta(seconds=ago),
                node_id="a",
                outcome=outcome,
                duration_seconds=duration,
                freeze_seconds=0.03 if outcome == "ok" else 0.0,
                files=4,
                bytes=4096,
            )
        )
    await AppliedVersion.insert(AppliedVersion(node_id="a", number=2, applied_at=now))
    return now


@pytest.fixture
async def two_nodes(app, settings, monkeypatch):
    """The app under test is node a, the active one, with its peer b reachable."""
    peer_status = AGENT_STATUS | {
        "queue": {"incoming": 0, "active": 0, "deferred": 0, "hold": 0, "maildrop": 0},
        "replica": {"files": 7, "bytes": 70000},
    }
    async with (
        fake_agent({"status": AGENT_STATUS}) as agent_a,
        fake_agent({"status": peer_status}) as agent_b,
    ):
        b = passive_slave(settings, agent_b.path)
        async with serve_https(create_app(b), b) as peer:
            token = await tokens.create("a-to-b", "cluster", "test")
            a = peer_settings(settings, peer, token, node_id="a", vip_address=HELD_VIP)
            monkeypatch.setattr(app.state, "settings", a)
            monkeypatch.setattr(app.state, "agent", AgentClient(agent_a.path))
            yield a


# -- the panel and the page ---------------------------------------------------------------------


async def test_the_dashboard_loads_the_panel_after_the_page(login_as):
    page = (await (await login_as("readonly")).get("/")).text
    section = page[page.index('<section class="card" id="cluster-status"') :]
    section = section[: section.index("</section>")]
    assert 'hx-get="/cluster" hx-trigger="load, every 15s"' in section
    assert '<a href="/cluster">' in section  # the same without JavaScript


async def test_the_panel_shows_both_nodes_side_by_side(login_as, two_nodes):
    await _history()
    client = await login_as("readonly")
    fragment = (await client.get("/cluster", headers=HTMX)).text

    assert "<html" not in fragment and "<h2>Cluster status</h2>" in fragment
    assert re.search(
        r'id="vip-owner">VIP owner \(127\.0\.0\.1\):\s*<strong>Node a</strong>', fragment
    )
    a = _card(fragment, "a")
    assert '<dd class="vrrp-state"><strong>MASTER</strong>' in a
    assert "<strong>holds the VIP</strong>" in a
    assert '<dd class="queue">7 messages</dd>' in a
    assert '<dd class="replica">5 files, 12345 bytes</dd>' in a
    assert re.search(r'class="last-sync">\d s ago: <span class="error">failed</span>,\s*1\.50 s', a)
    assert re.search(
        r'class="last-ok-sync">2\d s ago: <span class="ok">ok</span>,\s*0\.25 s, frozen 30 ms', a
    )
    assert re.search(r'<dd class="lag"><strong>(19|2\d)\.\d s</strong>', a)
    assert re.search(r'<dd class="config">Master version <strong>2</strong>, since 20\d\d-', a)
    b = _card(fragment, "b")
    assert "<strong>BACKUP</strong>" in b and "does not hold the VIP" in b
    assert '<dd class="queue">0 messages</dd>' in b
    assert '<dd class="replica">7 files, 70000 bytes</dd>' in b  # a's 7 queued, in b's replica
    assert "this node does not hold the VIP: its queue is not replicated" in b
    assert "unknown: no config version is applied on this node yet" in b

    page = (await client.get("/cluster")).text  # without JavaScript: the whole page
    assert "<html" in page and 'id="node-status-b"' in page
    assert 'hx-get="/cluster" hx-trigger="every 15s"' in page


async def test_the_panel_says_while_a_master_takes_over_the_peers_queue_and_how_it_ended(
    login_as, two_nodes
):
    now = await _history()
    client = await login_as("readonly")

    async def took() -> str:
        card = _card((await client.get("/cluster", headers=HTMX)).text, "a")
        return card[card.index('<dd class="vrrp-state">') :].split("</dd>")[0]

    assert '<strong>MASTER</strong> · <span class="muted promotion">taking over the peer&#39;s' in (
        await took()
    )
    await Promotion.insert(Promotion(node_id="a", master_at=now, finished_at=now, imported=3))
    assert '<span class="promotion">took over 3 messages from the peer</span>' in await took()
    failed = "importing the replica failed: the agent is not running"
    await Promotion.insert(Promotion(node_id="a", master_at=now, finished_at=now, error=failed))
    assert f"failed: {failed}</strong>" in await took()
    # b is BACKUP: a takeover is only a MASTER's.
    assert "promotion" not in _card((await client.get("/cluster", headers=HTMX)).text, "b")


async def test_the_dashboard_shows_which_node_delivered_what(login_as, two_nodes):
    """A failover drill: node a deferred 3 messages, node b delivered them after taking over.
    Each node logs only its own Postfix; the panel the dashboard loads shows both."""
    now = dt.datetime.now(dt.UTC)
    rows = [("a", f"A{n}", "deferred") for n in range(3)] + [
        ("b", f"B{n}", "sent") for n in range(3)
    ]
    await MailLog.insert(
        *[
            MailLog(at=now, node_id=node, queue_id=qid, recipient="x@dest.example", status=status)
            for node, qid, status in rows
        ]
    )
    client = await login_as("readonly")
    dashboard = (await client.get("/")).text
    assert "Each node counts what its own Postfix logged" in dashboard
    assert 'hx-get="/cluster" hx-trigger="load, every 15s"' in dashboard
    fragment = (await client.get("/cluster", headers=HTMX)).text
    counts = {
        node: dict(re.findall(r'<td class="(\w+)">([^<]*)</td>', _row(fragment, f"traffic-{node}")))
        for node in ("a", "b")
    }
    assert (counts["a"]["deferred"], counts["a"]["delivered"]) == ("3", "0")
    assert (counts["b"]["deferred"], counts["b"]["delivered"]) == ("0", "3")


def _row(html: str, row_id: str) -> str:
    row = html[html.index(f'id="{row_id}"') :]
    return row[: row.index("</tr>")]


def _card(html: str, node: str) -> str:
    card = html[html.index(f'id="node-status-{node}"') :]
    return card[: card.index("</section>")]


async def test_an_unreachable_peer_is_one_clear_line_in_the_panel(login_as):
    fragment = (await (await login_as("readonly")).get("/cluster", headers=HTMX)).text
    assert 'id="node-status-a"' in fragment
    assert (
        '<p class="error" id="peer-error">not configured: PEER_API_URL, PEER_API_TOKEN and '
        "PEER_CERT_FINGERPRINT are not all set</p>"
    ) in fragment
    # This node's own parts say why they are unknown, rather than failing the panel.
    assert "unknown: the privileged agent is not reachable" in fragment
    assert "unknown: VIP_ADDRESS is not set" in fragment


async def test_the_panel_speaks_german(login_as, two_nodes):
    await _history()
    client = await login_as("readonly")
    fragment = (await client.get("/cluster", headers=HTMX | {"accept-language": "de"})).text
    for german in ("Cluster-Status", "VRRP-Zustand", "Replikationsrückstand", "hält die VIP"):
        assert german in fragment
    assert re.search(r"vor \d s: ", fragment) and "7 Nachrichten" in fragment


def test_every_cluster_string_has_a_german_translation():
    texts: set[str] = set()
    for template in [*(ROOT / "templates" / "cluster").glob("*.html")]:
        text = template.read_text()
        texts |= set(re.findall(r'_\(\s*"([^"]+)"', text) + re.findall(r"_\(\s*'([^']+)'", text))
    assert len(texts) > 30
    assert sorted(texts - GERMAN.keys()) == []


async def test_the_switchover_form_is_offered_to_admins_on_the_active_node_only(
    login_as, settings, monkeypatch, app
):
    readonly = (await (await login_as("readonly")).get("/cluster")).text
    assert 'id="run-switchover"' not in readonly and "Planned switchover" not in readonly
    admin = await login_as("admin")
    # This node does not hold the VIP: no form, a sentence saying where to start it.
    monkeypatch.setattr(
        app.state, "settings", dataclasses.replace(settings, vip_address=NOT_HELD_VIP)
    )
    page = (await admin.get("/cluster")).text
    assert 'id="run-switchover"' not in page and 'id="switchover-not-here"' in page
    monkeypatch.setattr(app.state, "settings", dataclasses.replace(settings, vip_address=HELD_VIP))
    page = (await admin.get("/cluster")).text
    assert 'id="run-switchover"' in page and 'id="switchover-not-here"' not in page
    assert f"through this node&#39;s own address ({settings.node_ip})" in page
    assert 'id="via-vip"' not in page
    page = (await admin.get("/cluster", headers={"host": HELD_VIP})).text
    assert '<p class="error" role="alert" id="via-vip">' in page


async def _finished_report(admin, location: str, headers: dict[str, str]) -> str:
    """The switchover's page or fragment once the run has finished (polled as HTMX does)."""
    for _ in range(100):
        answer = await admin.get(location, headers=headers)
        assert answer.status_code == 200
        if 'hx-trigger="every 1s"' not in answer.text and 'http-equiv="refresh"' not in (
            answer.text
        ):
            return answer.text
        await asyncio.sleep(0.05)
    raise AssertionError(f"the switchover at {location} did not finish")


async def test_the_switchover_from_the_gui_shows_its_steps_as_they_happen_and_is_audited(
    login_as, app, settings, monkeypatch
):
    """Here this node does not hold the VIP: the switchover refuses at its first step."""
    monkeypatch.setattr(
        app.state, "settings", dataclasses.replace(settings, vip_address=NOT_HELD_VIP)
    )
    admin = await login_as("admin")
    await admin.get("/cluster")
    answer = await admin.post("/cluster/switchover", headers=csrf(admin) | HTMX)
    assert answer.status_code == 200
    assert "<html" not in answer.text
    # The answer comes at once and polls the run's own address until it has finished.
    run_id = re.search(r'data-run="([\w-]+)"', answer.text).group(1)
    report = await _finished_report(admin, f"/cluster/switchover/{run_id}", HTMX)
    assert "<html" not in report
    assert '<p id="switchover-outcome" class="error">The switchover failed.</p>' in report
    step = report[report.index('id="step-vip"') :]
    assert f"does not hold the VIP {NOT_HELD_VIP}: run it on the active node" in step
    assert report.count('class="step-skipped"') == 6
    entry = await AuditLog.select().where(AuditLog.action == "cluster.switchover").first()
    assert (entry["actor"], entry["outcome"], entry["source_ip"]) == (
        "admin-user",
        "failed",
        "198.18.0.30",
    )

    # Without JavaScript: a page of the run that refreshes itself until the report is whole.
    started = await admin.post(
        "/cluster/switchover", data={"_csrf_token": csrf(admin)["x-csrftoken"]}
    )
    assert started.status_code == 303
    location = started.headers["location"]
    assert location.startswith("/cluster/switchover/") and run_id not in location
    page = await _finished_report(admin, location, {})
    assert "<html" in page and 'id="switchover-steps"' in page
    assert 'id="node-status-a"' in page


async def test_the_steps_of_a_running_switchover_show_the_step_under_way(
    login_as, app, settings, monkeypatch
):
    """A peer that does not answer in time: while the `peer` step waits, the page says so."""
    monkeypatch.setattr(app.state, "settings", dataclasses.replace(settings, vip_address=HELD_VIP))
    asked = asyncio.Event()
    release = asyncio.Event()

    async def slow_peer(settings):
        """The switchover's question waits; the cluster page's, asked meanwhile, does not."""
        if not asked.is_set():
            asked.set()
            await release.wait()
        return {"reachable": False, "error": "unreachable: no answer within 3 s"}

    admin = await login_as("admin")
    await admin.get("/cluster")
    monkeypatch.setattr(status, "peer_status", slow_peer)
    answer = await admin.post("/cluster/switchover", headers=csrf(admin) | HTMX)
    run_id = re.search(r'data-run="([\w-]+)"', answer.text).group(1)
    await asyncio.wait_for(asked.wait(), 5)
    running = (await admin.get(f"/cluster/switchover/{run_id}", headers=HTMX)).text
    assert 'hx-trigger="every 1s"' in running
    assert "The switchover is running (started by admin-user)." in running
    assert '<tr class="step-ok" id="step-vip">' in running
    assert '<tr class="step-running" id="step-peer">' in running
    # While it runs, the cluster page offers no second one but shows this one.
    page = (await admin.get("/cluster")).text
    assert 'id="run-switchover"' not in page and f'data-run="{run_id}"' in page
    assert '<meta http-equiv="refresh" content="1">' in page
    release.set()
    report = await _finished_report(admin, f"/cluster/switchover/{run_id}", HTMX)
    assert "unreachable: no answer within 3 s" in report
    assert "The switchover failed." in report


# -- the API --------------------------------------------------------------------------------------


async def test_the_status_api_gives_the_peer_this_nodes_status(client, two_nodes):
    await _history()
    headers = {"authorization": "Bearer " + await tokens.create("b-to-a", "cluster", "test")}
    body = (await client.get("/api/cluster/status", headers=headers)).json()
    assert body["node_id"] == "a" and body["vrrp"]["state"] == "MASTER"
    assert body["vip"]["held"] is True and body["queue"]["messages"] == 7
    assert body["sync"]["runs"] == {"ok": 1, "conflict": 1, "failed": 1}
    assert "peer" not in body  # only this node: the peer never asks its peer back


# -- /metrics -------------------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(
    rf"(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)?\}})? (?P<value>\S+)"
)


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """A strict reader of the text exposition format 0.0.4 as this product writes it: HELP and
    TYPE once per family and before its samples, a family's samples together, valid names,
    labels and values, no series twice, counters named *_total and never negative."""
    assert text.endswith("\n") and "\n\n" not in text
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    finished: set[str] = set()
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, doc = line[len("# HELP ") :].partition(" ")
            assert re.fullmatch(_NAME, name) and doc.strip() and name not in helps, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE ") :].split(" ")
            assert kind in ("gauge", "counter") and name not in types, line
            assert name in helps, f"TYPE before HELP: {line}"
            if current is not None:
                finished.add(current)
            types[name], current = kind, name
        else:
            match = _SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            name = match["name"]
            assert name == current and name not in finished, f"{name} out of its family"
            labels = tuple(sorted(re.findall(_LABEL, match["labels"] or "")))
            value = float(match["value"])
            if types[name] == "counter":
                assert name.endswith("_total") and value >= 0
            assert (name, labels) not in samples, f"twice: {line}"
            samples[(name, labels)] = value
    return types, samples


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_metrics_give_both_nodes_in_prometheus_text_format(client, two_nodes):
    now = await _history()
    headers = {"authorization": "Bearer " + await tokens.create("prometheus", "read", "test")}
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"

    types, samples = parse(response.text)
    assert set(types) == {family.name for family in metrics.FAMILIES} | {"mailrelay_peer_up"}
    assert types["mailrelay_sync_runs_total"] == "counter"
    expected = {
        ("mailrelay_vrrp_master", "a"): 1,
        ("mailrelay_vrrp_master", "b"): 0,
        ("mailrelay_vip_held", "a"): 1,
        ("mailrelay_vip_held", "b"): 0,
        ("mailrelay_queue_messages", "a"): 7,
        ("mailrelay_queue_messages", "b"): 0,
        ("mailrelay_replica_files", "a"): 5,
        ("mailrelay_replica_files", "b"): 7,
        ("mailrelay_replica_bytes", "b"): 70000,
        ("mailrelay_sync_last_duration_seconds", "a"): 1.5,
        ("mailrelay_sync_last_freeze_seconds", "a"): 0.0,
        ("mailrelay_config_version", "a"): 2,
        # a is the master and runs what it applied; b is another master with nothing applied.
        ("mailrelay_config_ready", "a"): 1,
        ("mailrelay_config_ready", "b"): 0,
        ("mailrelay_shadow_milter_up", "a"): 1,
    }
    for (name, node), value in expected.items():
        assert sample(samples, name, node=node) == value, (name, node)
    for outcome in ("ok", "conflict", "failed"):
        assert sample(samples, "mailrelay_sync_runs_total", node="a", outcome=outcome) == 1
    ended = now - dt.timedelta(seconds=20) + dt.timedelta(seconds=0.25)
    assert sample(
        samples, "mailrelay_sync_last_success_timestamp_seconds", node="a"
    ) == pytest.approx(ended.timestamp(), abs=0.001)
    assert 19 < sample(samples, "mailrelay_replication_lag_seconds", node="a") < 30
    assert sample(samples, "mailrelay_peer_up") == 1
    # Unknown is absent, not 0: b is passive (no lag), has no sync and no applied version.
    for name in (
        "mailrelay_replication_lag_seconds",
        "mailrelay_sync_last_duration_seconds",
        "mailrelay_config_version",
        "mailrelay_config_differ_seconds",
    ):
        assert sample(samples, name, node="b") is None, name


async def test_metrics_with_the_peer_and_the_agent_down(client):
    headers = {"authorization": "Bearer " + await tokens.create("prometheus", "read", "test")}
    types, samples = parse((await client.get("/metrics", headers=headers)).text)
    assert len(types) == len(metrics.FAMILIES) + 1  # every family is described all the same
    # What this machine's files say (the certificate, the spool's disk) is not the point here.
    host = {"mailrelay_tls_cert_expiry_timestamp_seconds", "mailrelay_spool_used_ratio"}
    known = {key: value for key, value in samples.items() if key[0] not in host}
    # Known even so: nothing is applied here, so this node is not ready; the database's kept
    # counters and the version need no agent.
    node = (("node", "a"),)
    assert known == {
        ("mailrelay_peer_up", ()): 0.0,
        ("mailrelay_config_ready", node): 0.0,
        ("mailrelay_build_info", (("node", "a"), ("version", status.VERSION))): 1.0,
        ("mailrelay_messages_accepted_total", node): 0.0,
        ("mailrelay_rejections_total", node): 0.0,
        **{
            ("mailrelay_deliveries_total", (("node", "a"), ("status", label))): 0.0
            for label in ("delivered", "deferred", "bounced", "expired")
        },
    }


async def test_metrics_want_a_token_not_a_session(client, login_as):
    assert (await client.get("/metrics")).status_code == 401
    session = await login_as("admin")
    answer = await session.get("/metrics")
    assert answer.status_code == 401 and answer.json()["status_code"] == 401
