"""The slave's report of what it applied: the master's API, the pull that sends it, and the
master's dashboard showing both nodes.

The end-to-end tests use test_config_pull's real master (`mailrelay serve` in its own process
with its own database, over HTTPS with a pinned certificate) and its agent stub.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
from typing import Any

import asyncpg
import httpx
import pytest

from app.auth import tokens
from app.cluster import pull
from app.config import applied, service
from app.db.tables import AppliedVersion, ConfigVersion
from app.web.app import create_app
from tests.conftest import PASSWORD, _hash, csrf, http_client, login, make_user
from tests.integration import test_config_pull as pulling
from tests.integration.test_config_pull import (
    Master,
    master_config,
    master_do,
    pinned,
    run,
    slave,
)

# test_config_pull's fixtures: a real master (for this module) and the agent stub.
pki = pulling.pki
master = pulling.master
master_db = pulling.master_db
agent = pulling.agent
box = pulling.box

NOW = dt.datetime.now(dt.UTC)


def report(node_id: Any = "b", number: Any = 3, master_number: Any = 7, **extra: Any) -> dict:
    return {
        "node_id": node_id,
        "number": number,
        "master_number": master_number,
        "applied_at": "2024-05-01T10:00:00+00:00",
    } | extra


async def _bearer(kind: str) -> dict[str, str]:
    return {"authorization": "Bearer " + await tokens.create(f"{kind}-token", kind, "test")}


async def _rows() -> list[dict[str, Any]]:
    return await AppliedVersion.select(
        AppliedVersion.node_id, AppliedVersion.number, AppliedVersion.applied_at
    ).order_by(AppliedVersion.node_id)


async def _reported_at(node_id: str) -> dt.datetime | None:
    row = await AppliedVersion.select(AppliedVersion.reported_at).where(
        AppliedVersion.node_id == node_id
    )
    return row[0]["reported_at"] if row else None


# -- the API ----------------------------------------------------------------------------------


async def test_a_cluster_token_reports_in_the_masters_numbering(client, app):
    response = await client.post(
        "/api/nodes/applied", json=report(), headers=await _bearer("cluster")
    )
    assert response.status_code == 204, response.text
    # The master's version (7), not the slave's local number (3).
    assert await _rows() == [
        {
            "node_id": "b",
            "number": 7,
            "applied_at": dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC),
        }
    ]
    reported_at = await _reported_at("b")
    assert reported_at is not None and NOW <= reported_at <= dt.datetime.now(dt.UTC)


async def test_reporting_twice_keeps_one_row_per_node(client):
    headers = await _bearer("cluster")
    assert (
        await client.post("/api/nodes/applied", json=report(), headers=headers)
    ).status_code == 204
    later = report(number=4, master_number=9, applied_at="2024-05-01T12:30:00+02:00")
    assert (await client.post("/api/nodes/applied", json=later, headers=headers)).status_code == 204
    assert await _rows() == [
        {
            "node_id": "b",
            "number": 9,
            "applied_at": dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.UTC),
        }
    ]


async def test_only_a_cluster_token_may_report(client, login_as):
    response = await client.post("/api/nodes/applied", json=report(), headers=await _bearer("read"))
    assert response.status_code == 403
    session = await login_as("admin")
    assert (await session.post("/api/nodes/applied", json=report())).status_code == 401
    assert (await client.post("/api/nodes/applied", json=report())).status_code == 401
    assert await _rows() == []


@pytest.mark.parametrize(
    "body",
    [
        report(node_id=""),
        report(node_id="b" * 33),
        report(node_id="node-b"),
        report(node_id="b c"),
        report(node_id="b\n"),
        report(node_id="bä"),
        report(node_id="../b"),
        report(node_id=5),
        report(node_id=None),
        report(node_id="a"),  # the master itself (NODE_ID=a in the tests)
        report(master_number=-1),
        report(number=-1),
        report(master_number=True),
        report(master_number=1.5),
        report(master_number="7"),
        report(master_number=2**31),
        report(applied_at="yesterday"),
        report(applied_at="2024-05-01T10:00:00"),  # no time zone
        report(applied_at=None),
        {"node_id": "b", "master_number": 7, "applied_at": "2024-05-01T10:00:00+00:00"},
        {"node_id": "b", "number": 3, "applied_at": "2024-05-01T10:00:00+00:00"},
        {"node_id": "b", "number": 3, "master_number": 7},
        [],
    ],
)
async def test_a_bad_report_is_refused(client, body):
    response = await client.post("/api/nodes/applied", json=body, headers=await _bearer("cluster"))
    assert response.status_code == 400, response.text
    assert await _rows() == []


async def test_a_node_id_of_32_characters_is_fine(client):
    body = report(node_id="B2" * 16)
    response = await client.post("/api/nodes/applied", json=body, headers=await _bearer("cluster"))
    assert response.status_code == 204, response.text


async def test_an_apply_time_in_the_future_is_taken_as_now(client):
    future = (NOW + dt.timedelta(days=1)).isoformat()
    response = await client.post(
        "/api/nodes/applied", json=report(applied_at=future), headers=await _bearer("cluster")
    )
    assert response.status_code == 204
    [row] = await _rows()
    assert row["applied_at"] <= dt.datetime.now(dt.UTC)


async def test_a_slave_takes_no_reports(settings):
    on_slave = create_app(dataclasses.replace(settings, cluster_mode="slave", node_id="b"))
    async with http_client(on_slave) as client:
        body = report(node_id="c")
        headers = await _bearer("cluster")
        response = await client.post("/api/nodes/applied", json=body, headers=headers)
    assert response.status_code == 409
    assert await _rows() == []


# -- the dashboard ----------------------------------------------------------------------------


async def _versions(count: int) -> None:
    actor = service.Actor("t")
    for i in range(count):
        await service.add_network(actor, f"192.0.2.{i * 4}/30")


def _row(page: str, node_id: str) -> str:
    start = page.index(f'<tr id="node-{node_id}">')
    return page[start : page.index("</tr>", start)]


async def test_the_masters_dashboard_shows_both_nodes(client, login_as, app):
    await _versions(3)
    await AppliedVersion.insert(AppliedVersion(node_id="a", number=3, applied_at=NOW))
    headers = await _bearer("cluster")
    body = report(master_number=2, applied_at=NOW.isoformat())
    assert (await client.post("/api/nodes/applied", json=body, headers=headers)).status_code == 204
    # A node that reported once, long ago (say, before it was switched off).
    await AppliedVersion.insert(
        AppliedVersion(
            node_id="c", number=3, applied_at=NOW, reported_at=NOW - dt.timedelta(seconds=61)
        )
    )

    page = (await (await login_as("readonly")).get("/")).text
    assert 'id="cluster"' in page
    assert '<strong id="cluster-latest"><a href="/versions/3">3</a></strong>' in page
    assert 'id="config-draft"' not in page
    own = _row(page, "a")
    assert "(this node)" in own and '"master-number">3<' in own and "node-ok" in own
    peer = _row(page, "b")
    assert '"master-number">2<' in peer and NOW.strftime("%Y-%m-%d %H:%M:%S") in peer
    assert "runs another version than the master (3)" in peer and "not heard from" not in peer
    silent = _row(page, "c")
    assert "not heard from" in silent and "another version" not in silent
    assert "last heard" in silent
    # This node first.
    assert page.index('id="node-a"') < page.index('id="node-b"') < page.index('id="node-c"')

    body = report(master_number=3)
    assert (await client.post("/api/nodes/applied", json=body, headers=headers)).status_code == 204
    peer = _row((await (await login_as("operator")).get("/")).text, "b")
    assert "node-ok" in peer and "another version" not in peer


async def test_a_restarted_master_still_knows_when_a_slave_reported(client, settings):
    """The report time is stored, not kept by the process: a master restarted just after a
    report does not call the slave "not reporting" until the slave's next report."""
    await _versions(1)
    await AppliedVersion.insert(AppliedVersion(node_id="a", number=1, applied_at=NOW))
    body = report(master_number=1, applied_at=NOW.isoformat())
    assert (
        await client.post("/api/nodes/applied", json=body, headers=await _bearer("cluster"))
    ).status_code == 204
    await make_user("viewer", "readonly")
    async with http_client(create_app(settings)) as restarted:
        await login(restarted, "viewer", PASSWORD)
        row = _row((await restarted.get("/")).text, "b")
    assert "node-ok" in row and "not heard from" not in row


async def test_a_node_that_never_reported_to_this_master_is_not_reporting(login_as, app):
    await _versions(1)
    await AppliedVersion.insert(AppliedVersion(node_id="d", number=1, applied_at=NOW))
    page = (await (await login_as("readonly")).get("/")).text
    row = _row(page, "d")
    assert "not heard from" in row and "last heard" not in row


async def test_the_cluster_section_in_german(client, login_as):
    await _versions(2)
    await AppliedVersion.insert(AppliedVersion(node_id="a", number=2, applied_at=NOW))
    body = report(master_number=1, applied_at=NOW.isoformat())
    headers = await _bearer("cluster")
    assert (await client.post("/api/nodes/applied", json=body, headers=headers)).status_code == 204
    user = await login_as("readonly")
    page = (await user.get("/", headers={"accept-language": "de"})).text
    assert "<h2>Cluster</h2>" in page and "eine andere Version als der Master (2)" in page


async def test_the_dashboard_without_any_applied_version(login_as):
    page = (await (await login_as("readonly")).get("/")).text
    assert "No node has applied a version yet." in page


# -- end to end: a slave reports to a real master ---------------------------------------------


async def master_rows(master_db: asyncpg.Connection) -> dict[str, int]:
    """What slaves reported to the master (not its own row: what its own Postfix runs)."""
    rows = await master_db.fetch(
        "SELECT node_id, number FROM applied_versions WHERE node_id <> 'a'"
    )
    return {row["node_id"]: row["number"] for row in rows}


async def test_after_a_pull_the_master_knows_the_slaves_version(
    settings, master, master_db, agent, box
):
    master_config(master)  # master versions 1-4
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)

    result = await run(node, agent, box, pinned(master.pin))
    assert result.outcome == "applied", result.detail
    assert (result.master_version, result.local_version) == (4, 1)
    # Here the slave runs its local version 1; the master records its own number, 4.
    assert await AppliedVersion.select(AppliedVersion.number).where(
        AppliedVersion.node_id == "b"
    ).first() == {"number": 1}
    assert await master_rows(master_db) == {"b": 4}
    reported_at = await master_db.fetchval(
        "SELECT applied_at FROM applied_versions WHERE node_id = 'b'"
    )
    local = await AppliedVersion.select().where(AppliedVersion.node_id == "b").first()
    assert reported_at == local["applied_at"]

    # The master lost what it knew (as after a rebuild): an unchanged run reports again.
    await master_db.execute("DELETE FROM applied_versions")
    again = await run(node, agent, box, pinned(master.pin))
    assert again.outcome == "unchanged"
    assert await master_rows(master_db) == {"b": 4}

    # A newer master version: applied here as local version 2, reported as master version 6.
    master_do(
        master,
        ["delete_network", "192.0.2.0/24"],
        ["network", "198.51.100.0/24"],
        ["apply", []],
    )
    newer = await run(node, agent, box, pinned(master.pin))
    assert (newer.outcome, newer.master_version, newer.local_version) == ("applied", 6, 2)
    assert await master_rows(master_db) == {"b": 6}


async def test_a_refused_version_is_reported_as_the_one_still_running(
    settings, master, master_db, agent, box
):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)
    assert (await run(node, agent, box, pinned(master.pin))).outcome == "applied"
    agent.problems = ["postfix check: something is wrong"]
    master_do(master, ["network", "198.51.100.0/24"], ["apply", []])  # master version 5
    result = await run(node, agent, box, pinned(master.pin))
    assert result.outcome == "failed"
    # Still on 4: the master's dashboard shows this node behind, not silent.
    assert await master_rows(master_db) == {"b": 4}


async def test_a_failed_report_does_not_fail_the_run(
    settings, master, master_db, agent, box, caplog, monkeypatch
):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    monkeypatch.setattr(pull, "REPORT_PATH", "/api/nodes/nowhere")
    caplog.set_level("INFO", logger="mailrelay.config_pull")

    result = await run(slave(settings, master.url, token), agent, box, pinned(master.pin))
    assert result.outcome == "applied" and result.ok, result.detail
    assert await master_rows(master_db) == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "config-pull: the applied version was not reported to the master: "
        "the master answered HTTP 404"
    ]


async def test_nothing_is_reported_before_anything_is_applied(
    settings, master, master_db, agent, box
):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    agent.problems = ["postfix check: something is wrong"]
    result = await run(slave(settings, master.url, token), agent, box, pinned(master.pin))
    assert result.outcome == "failed"
    assert await master_rows(master_db) == {}


def _master_client(master: Master, pki: Any) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    return httpx.AsyncClient(base_url=master.url, verify=context)


async def _log_in(client: httpx.AsyncClient, master_db: asyncpg.Connection) -> None:
    """A readonly user `watcher` on the master, logged in with `client`."""
    await master_db.execute(
        "INSERT INTO app_users (username, password_hash, role, must_change_password, "
        "failed_logins, created_at) VALUES ('watcher', $1, 'readonly', false, 0, now())",
        _hash(PASSWORD),
    )
    await client.get("/login")
    response = await client.post(
        "/login",
        data={"username": "watcher", "password": PASSWORD},
        headers=csrf(client),
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


async def test_the_masters_dashboard_shows_the_version_on_both_nodes(
    settings, master, master_db, pki, agent, box
):
    master_config(master)  # version 4, applied on the master
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)
    assert (await run(node, agent, box, pinned(master.pin))).outcome == "applied"
    master_do(master, ["network", "198.51.100.0/24"])  # master version 5: a draft

    async with _master_client(master, pki) as client:
        await _log_in(client, master_db)
        page = (await client.get("/")).text
    assert '<strong id="cluster-latest"><a href="/versions/5">5</a></strong>' in page
    assert 'id="config-draft"' in page and "Version 5 is saved but not applied" in page
    own, peer = _row(page, "a"), _row(page, "b")
    assert "(this node)" in own and '"master-number">4<' in own and "node-ok" in own
    assert '"master-number">4<' in peer and "node-ok" in peer
    assert "not heard from" not in peer and 'id="config-drift"' not in page


async def test_a_slaves_dashboard_shows_the_master_version_it_runs(settings):
    await ConfigVersion.insert(
        ConfigVersion(
            number=1,
            snapshot={"sender_domains": [], "trusted_networks": []},
            checksum="0" * 64,
            author="config-pull",
            comment="pulled master version 9",
            created_at=NOW,
        )
    )
    await AppliedVersion.insert(AppliedVersion(node_id="b", number=1, applied_at=NOW))
    await make_user("viewer", "readonly")
    on_slave = create_app(dataclasses.replace(settings, cluster_mode="slave", node_id="b"))
    async with http_client(on_slave) as client:
        assert (await login(client, "viewer")).status_code == 303
        page = (await client.get("/")).text
    row = _row(page, "b")
    assert "(this node)" in row and 'Master version <strong class="master-number">9<' in row
    assert "(local version 1)" in row
    # It has not heard from the master yet: it cannot tell whether 9 is what the master runs.
    assert "node-ok" not in row and "another version" not in row
    assert 'id="config-not-ready"' in page
    assert "the master has not told this node what it runs yet" in page

    # The master's export said it runs 9 (as a pull records it): ready, and both rows agree.
    await applied.record_heard("a", 9, NOW)
    async with http_client(on_slave) as client:
        assert (await login(client, "viewer")).status_code == 303
        page = (await client.get("/")).text
    assert 'id="config-not-ready"' not in page
    assert "node-ok" in _row(page, "b") and "node-ok" in _row(page, "a")
    assert "last heard" in _row(page, "a")


async def test_a_slave_behind_the_master_for_longer_than_the_setting_is_an_alert(settings):
    """The slave runs master version 8 while the master has applied 9 since two minutes ago
    (say, the slave's applies keep failing): past CONFIG_DRIFT_ALERT_SECONDS the dashboard says
    so, and so does /metrics."""
    await ConfigVersion.insert(
        ConfigVersion(
            number=1,
            snapshot={"sender_domains": [], "trusted_networks": []},
            checksum="0" * 64,
            author="config-pull",
            comment="pulled master version 8",
            created_at=NOW,
        )
    )
    two_minutes_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
    await AppliedVersion.insert(
        AppliedVersion(node_id="b", number=1, applied_at=two_minutes_ago - dt.timedelta(hours=1))
    )
    await applied.record_heard("a", 9, two_minutes_ago)
    await make_user("viewer", "readonly")
    slow = dataclasses.replace(settings, cluster_mode="slave", node_id="b")
    async with http_client(create_app(slow)) as client:
        assert (await login(client, "viewer")).status_code == 303
        page = (await client.get("/")).text
    assert 'id="config-drift"' in page and 'id="config-not-ready"' in page
    assert "this node runs master version 8, the master runs 9" in page
    assert "runs another version than the master (9)" in _row(page, "b")

    patient = dataclasses.replace(slow, config_drift_alert_seconds=600)
    async with http_client(create_app(patient)) as client:
        assert (await login(client, "viewer")).status_code == 303
        page = (await client.get("/")).text
    assert 'id="config-drift"' not in page and 'id="config-not-ready"' in page
