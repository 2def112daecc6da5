"""The automation API (/api/v1) over the app's real HTTP stack and once over real HTTPS: token
kinds, source networks, expiry and last use; each resource's CRUD through the GUI's services with
their validation and audit; Test, Apply, versions and rollback; queue actions; the slave."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import os
import ssl
import subprocess
import sys
from typing import Any

import httpx
import pytest

from app.agent.client import AgentClient
from app.auth import tokens
from app.db.tables import ApiToken, AuditLog, ConfigVersion, RelayRoute, SenderDomain
from app.web.app import create_app
from app.web.controllers import api
from tests.clusterpeer import Refusal, fake_agent, serve_https
from tests.conftest import csrf, http_client

SECRET = "relay-Secret-789"
ROUTE = {
    "host": "smtp.example.net",
    "port": 587,
    "tls_mode": "encrypt",
    "auth_user": "relayuser",
    "auth_password": SECRET,
}


async def _bearer(name: str, kind: str, **limits: Any) -> dict[str, str]:
    return {"authorization": "Bearer " + await tokens.create(name, kind, "test", **limits)}


@pytest.fixture
async def writer() -> dict[str, str]:
    return await _bearer("ci", "write")


async def _audit(action: str) -> list[dict[str, Any]]:
    return await AuditLog.select().where(AuditLog.action == action).order_by(AuditLog.id)


async def _versions() -> int:
    return await ConfigVersion.count()


# Token kinds, source networks, expiry, last use ---------------------------------------------


async def test_a_read_token_may_get_but_changes_nothing(client):
    headers = await _bearer("reader", "read")
    assert (await client.get("/api/v1/sender-domains", headers=headers)).status_code == 200
    attempts = [
        client.post("/api/v1/sender-domains", json={"name": "example.com"}, headers=headers),
        client.put("/api/v1/sender-domains/example.com", json={}, headers=headers),
        client.delete("/api/v1/trusted-networks/198.51.100.0/24", headers=headers),
        client.post("/api/v1/config/test", headers=headers),
        client.post("/api/v1/queue/flush", headers=headers),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 403, response.text
        assert "This API token is of kind read" in response.json()["detail"]
    assert await SenderDomain.count() == 0 and await _versions() == 0
    denied = await _audit("access.denied")
    assert {(r["actor"], r["outcome"]) for r in denied} == {("token:reader", "denied")}
    assert "POST /api/v1/sender-domains" in [r["target"] for r in denied]


async def test_a_cluster_token_pulls_as_before_but_cannot_change_the_configuration(client):
    headers = await _bearer("peer-b", "cluster")
    assert (await client.get("/api/config/export", headers=headers)).status_code == 200
    lock = {"holder": "node-b", "ttl_seconds": 30}
    assert (
        await client.post("/api/sync-lock/acquire", json=lock, headers=headers)
    ).status_code == 200
    response = await client.post(
        "/api/v1/sender-domains", json={"name": "example.com"}, headers=headers
    )
    assert response.status_code == 403
    assert await SenderDomain.count() == 0


async def test_a_write_token_cannot_take_the_peers_queue_sync_lock(client, writer):
    lock = {"holder": "node-b", "ttl_seconds": 30}
    response = await client.post("/api/sync-lock/acquire", json=lock, headers=writer)
    assert response.status_code == 403
    assert (await client.get("/api/config/export", headers=writer)).status_code == 200


async def test_a_token_used_from_outside_its_networks_is_refused_with_403(app):
    headers = await _bearer("office", "write", networks="203.0.113.0/24, 2001:db8::/32")
    async with http_client(app, "198.18.0.30") as elsewhere:
        response = await elsewhere.post(
            "/api/v1/sender-domains", json={"name": "example.com"}, headers=headers
        )
    assert response.status_code == 403
    assert response.json()["detail"] == (
        "The API token office may not be used from 198.18.0.30: it is limited to other "
        "source networks."
    )
    assert await SenderDomain.count() == 0
    row = await ApiToken.select().where(ApiToken.name == "office").first()
    assert row["last_used_at"] is None, "a refused use counted as the token's last use"
    [refusal] = await _audit("api.auth")
    assert (refusal["actor"], refusal["outcome"], refusal["source_ip"]) == (
        "token:office",
        "denied",
        "198.18.0.30",
    )

    for inside in ("203.0.113.7", "2001:db8::25"):
        async with http_client(app, inside) as office:
            response = await office.get("/api/v1/sender-domains", headers=headers)
        assert response.status_code == 200, inside


async def test_an_expired_token_is_refused_with_401(client):
    headers = await _bearer("short", "write", valid_days=1)
    assert (await client.get("/api/v1/versions", headers=headers)).status_code == 200
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    await ApiToken.update({ApiToken.expires_at: yesterday}).where(ApiToken.name == "short")
    response = await client.get("/api/v1/versions", headers=headers)
    assert response.status_code == 401
    assert "The API token short expired at " in response.json()["detail"]
    [refusal] = await _audit("api.auth")
    assert (refusal["actor"], refusal["outcome"]) == ("token:short", "denied")


async def test_each_accepted_use_is_shown_as_the_last_use_on_the_tokens_page(app, login_as):
    headers = await _bearer("nightly", "read")
    async with http_client(app, "198.18.0.44") as robot:
        assert (await robot.get("/api/v1/routes", headers=headers)).status_code == 200
    row = await ApiToken.select().where(ApiToken.name == "nightly").first()
    assert row["last_used_ip"] == "198.18.0.44"
    assert dt.datetime.now(dt.UTC) - row["last_used_at"] < dt.timedelta(minutes=1)
    admin = await login_as("admin")
    page = (await admin.get("/tokens")).text
    assert f"{row['last_used_at']:%Y-%m-%d %H:%M} from 198.18.0.44" in page


async def test_the_tokens_page_makes_a_write_token_with_networks_and_a_lifetime(login_as):
    admin = await login_as("admin")
    await admin.get("/tokens")
    form = {"name": "ansible", "kind": "write", "networks": "198.51.100.0/24", "valid_days": "30"}
    response = await admin.post("/tokens", data=form, headers=csrf(admin))
    assert response.status_code == 200
    assert 'id="new-token">mrt_' in response.text
    row = await ApiToken.select().where(ApiToken.name == "ansible").first()
    assert (row["kind"], row["allowed_networks"]) == ("write", "198.51.100.0/24")
    assert dt.timedelta(days=29) < row["expires_at"] - dt.datetime.now(dt.UTC) <= dt.timedelta(30)

    bad = form | {"name": "other", "networks": "198.51.100.1/24"}
    response = await admin.post("/tokens", data=bad, headers=csrf(admin))
    assert response.status_code == 422
    assert "198.51.100.1/24 has host bits set; did you mean 198.51.100.0/24?" in response.text
    assert not await ApiToken.exists().where(ApiToken.name == "other")


async def test_the_cli_makes_a_write_token_limited_to_a_network():
    result = subprocess.run(
        [
            *(sys.executable, "-m", "app.cli", "create-token", "terraform", "--kind", "write"),
            *("--allow-from", "198.51.100.0/24", "--allow-from", "10.1.0.0/16"),
            *("--valid-days", "7"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("mrt_")
    row = await ApiToken.select().where(ApiToken.name == "terraform").first()
    assert (row["kind"], row["allowed_networks"]) == ("write", "198.51.100.0/24 10.1.0.0/16")
    assert row["expires_at"] is not None


# Sender domains, routes, trusted networks -----------------------------------------------------


async def test_sender_domains_are_created_read_replaced_and_deleted_with_audit(client, writer):
    body = {"name": "Example.COM", "comment": "CRM"}
    response = await client.post("/api/v1/sender-domains", json=body, headers=writer)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/api/v1/sender-domains/example.com"
    assert response.json() == {
        "changed": True,
        "config_version": 1,
        "sender_domain": {"name": "example.com", "comment": "CRM", "route": None},
    }
    [added] = await _audit("domain.add")
    assert (added["actor"], added["target"], added["source_ip"]) == (
        "token:ci",
        "example.com",
        "198.18.0.30",
    )
    got = await client.get("/api/v1/sender-domains/example.com", headers=writer)
    assert got.json()["comment"] == "CRM"
    listed = await client.get("/api/v1/sender-domains", headers=writer)
    assert [d["name"] for d in listed.json()] == ["example.com"]

    # PUT is idempotent: the same body again makes no version; a new comment makes one.
    for _ in range(2):
        same = await client.put(
            "/api/v1/sender-domains/example.com", json={"comment": "CRM"}, headers=writer
        )
        assert same.status_code == 200
        assert (same.json()["changed"], same.json()["config_version"]) == (False, 1)
    changed = await client.put(
        "/api/v1/sender-domains/example.com", json={"comment": "billing"}, headers=writer
    )
    assert (changed.json()["changed"], changed.json()["config_version"]) == (True, 2)
    assert changed.json()["sender_domain"]["comment"] == "billing"
    assert [r["actor"] for r in await _audit("domain.comment")] == ["token:ci"]
    created = await client.put(
        "/api/v1/sender-domains/example.org", json={"comment": ""}, headers=writer
    )
    assert created.status_code == 201 and created.json()["config_version"] == 3

    deleted = await client.delete("/api/v1/sender-domains/example.com", headers=writer)
    assert deleted.status_code == 200 and deleted.json()["config_version"] == 4
    assert [r["actor"] for r in await _audit("domain.delete")] == ["token:ci"]
    again = await client.delete("/api/v1/sender-domains/example.com", headers=writer)
    assert again.status_code == 404
    assert again.json()["detail"] == "There is no sender domain example.com."
    assert (await client.get("/api/v1/sender-domains/example.com", headers=writer)).status_code == (
        404
    )
    assert await _versions() == 4


async def test_an_invalid_domain_gets_the_guis_own_message_with_422(client, writer, login_as):
    response = await client.post(
        "/api/v1/sender-domains", json={"name": "no_such..name"}, headers=writer
    )
    assert response.status_code == 422
    message = response.json()["errors"]["name"]
    assert response.json()["detail"] == message
    operator = await login_as("operator")
    await operator.get("/domains")
    gui = await operator.post("/domains", data={"name": "no_such..name"}, headers=csrf(operator))
    assert gui.status_code == 422
    assert message.replace("'", "&#39;") in gui.text
    await client.post("/api/v1/sender-domains", json={"name": "example.com"}, headers=writer)
    twice = await client.post(
        "/api/v1/sender-domains", json={"name": "example.com"}, headers=writer
    )
    assert twice.status_code == 422
    assert twice.json()["errors"] == {"name": "The sender domain example.com exists already."}
    malformed = await client.post("/api/v1/sender-domains", json={"comment": "x"}, headers=writer)
    assert malformed.status_code == 400
    assert await _versions() == 1


async def test_a_routes_password_is_write_only_and_never_returned(client, writer, app):
    await client.post("/api/v1/sender-domains", json={"name": "example.com"}, headers=writer)
    answers = []
    created = await client.post(
        "/api/v1/routes", json={"sender_domain": "example.com", **ROUTE}, headers=writer
    )
    answers.append(created)
    assert created.status_code == 201, created.text
    assert created.json()["route"] == {
        "sender_domain": "example.com",
        "host": "smtp.example.net",
        "port": 587,
        "tls_mode": "encrypt",
        "auth_user": "relayuser",
        "auth_password": "set",
    }
    stored = await RelayRoute.select().first()
    assert app.state.box.decrypt(stored["auth_password_enc"]) == SECRET
    [audited] = await _audit("route.set")
    assert audited["actor"] == "token:ci" and SECRET not in json.dumps(audited, default=str)

    answers.append(await client.get("/api/v1/routes/example.com", headers=writer))
    answers.append(await client.get("/api/v1/routes", headers=writer))
    answers.append(await client.get("/api/v1/sender-domains", headers=writer))
    answers.append(await client.get("/api/v1/versions/2", headers=writer))
    for answer in answers:
        assert answer.status_code in (200, 201)
        assert SECRET not in answer.text
        assert "auth_password_enc" not in answer.text

    # Repeating the same PUT (with the same password) makes no version; without a password the
    # stored one stays, as in the GUI's form.
    for body in (ROUTE, {k: v for k, v in ROUTE.items() if k != "auth_password"}):
        same = await client.put("/api/v1/routes/example.com", json=body, headers=writer)
        assert same.status_code == 200
        assert same.json()["changed"] is False and SECRET not in same.text
    assert await _versions() == 2
    plain = {"host": "mx.example.net", "port": 25, "tls_mode": "may", "clear_password": True}
    replaced = await client.put("/api/v1/routes/example.com", json=plain, headers=writer)
    assert replaced.json()["route"]["auth_password"] == "not set"
    assert replaced.json()["config_version"] == 3

    conflict = await client.post(
        "/api/v1/routes", json={"sender_domain": "example.com", **ROUTE}, headers=writer
    )
    assert conflict.status_code == 409 and "replace it with PUT" in conflict.json()["detail"]


async def test_route_validation_and_deletion(client, writer):
    await client.post("/api/v1/sender-domains", json={"name": "example.com"}, headers=writer)
    bad = ROUTE | {"port": 70000, "host": "localhost"}
    response = await client.put("/api/v1/routes/example.com", json=bad, headers=writer)
    assert response.status_code == 422
    assert response.json()["errors"] == {
        "host": "The relay host localhost names this host (localhost): a route must point at a "
        "mail server elsewhere on the network.",
        "port": "The port must be between 1 and 65535.",
    }
    no_password = {k: v for k, v in ROUTE.items() if k != "auth_password"}
    response = await client.put("/api/v1/routes/example.com", json=no_password, headers=writer)
    assert response.json()["errors"] == {"auth_password": "SMTP AUTH needs a password."}
    missing = await client.put("/api/v1/routes/example.org", json=ROUTE, headers=writer)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "There is no sender domain example.org."

    created = await client.put("/api/v1/routes/example.com", json=ROUTE, headers=writer)
    assert created.status_code == 201
    assert (await client.delete("/api/v1/routes/example.com", headers=writer)).status_code == 200
    assert [r["actor"] for r in await _audit("route.delete")] == ["token:ci"]
    again = await client.delete("/api/v1/routes/example.com", headers=writer)
    assert again.status_code == 404
    assert again.json()["detail"] == "The sender domain example.com has no route."
    assert await SenderDomain.count() == 1


async def test_trusted_networks_are_created_read_replaced_and_deleted(client, writer):
    body = {"cidr": "198.51.100.0/24", "comment": "app servers"}
    created = await client.post("/api/v1/trusted-networks", json=body, headers=writer)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/v1/trusted-networks/198.51.100.0/24"
    got = await client.get("/api/v1/trusted-networks/198.51.100.0/24", headers=writer)
    assert got.json() == {"cidr": "198.51.100.0/24", "comment": "app servers"}
    listed = await client.get("/api/v1/trusted-networks", headers=writer)
    assert listed.json() == [got.json()]
    assert [r["actor"] for r in await _audit("network.add")] == ["token:ci"]

    path = "/api/v1/trusted-networks/198.51.100.0/24"
    for expected in (True, False):
        answer = await client.put(path, json={"comment": "web"}, headers=writer)
        assert answer.status_code == 200 and answer.json()["changed"] is expected
    assert [r["actor"] for r in await _audit("network.comment")] == ["token:ci"]
    new = await client.put("/api/v1/trusted-networks/2001:db8:1::/48", json={}, headers=writer)
    assert new.status_code == 201

    host_bits = {"cidr": "10.0.0.1/8"}
    wide = await client.post("/api/v1/trusted-networks", json=host_bits, headers=writer)
    assert wide.status_code == 422
    assert wide.json()["detail"] == "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"

    assert (await client.delete(path, headers=writer)).status_code == 200
    again = await client.delete(path, headers=writer)
    assert again.status_code == 404
    assert again.json()["detail"] == "The network 198.51.100.0/24 is not trusted."
    assert [r["actor"] for r in await _audit("network.delete")] == ["token:ci"]


async def test_the_slave_refuses_changes_to_tokens_but_answers_reads(client, app, monkeypatch):
    writer = await _bearer("ci", "write")
    await client.post("/api/v1/sender-domains", json={"name": "example.com"}, headers=writer)
    slave = dataclasses.replace(
        app.state.settings, cluster_mode="slave", master_api_url="https://198.18.0.11:8443"
    )
    monkeypatch.setattr(app.state, "settings", slave)
    changes = [
        client.post("/api/v1/sender-domains", json={"name": "example.org"}, headers=writer),
        client.put("/api/v1/routes/example.com", json=ROUTE, headers=writer),
        client.delete("/api/v1/sender-domains/example.com", headers=writer),
        client.post("/api/v1/trusted-networks", json={"cidr": "10.0.0.0/8"}, headers=writer),
        client.post("/api/v1/versions/1/rollback", headers=writer),
    ]
    for change in changes:
        response = await change
        assert response.status_code == 403
        assert response.json()["detail"] == (
            "This node is a slave: change the configuration on the master."
        )
    assert (await client.get("/api/v1/sender-domains", headers=writer)).status_code == 200
    assert await _versions() == 1
    refused = await _audit("config.refused-on-slave")
    assert len(refused) == 5 and {r["actor"] for r in refused} == {"token:ci"}


# Test, Apply, versions, rollback, queue -------------------------------------------------------


@pytest.fixture
async def agent(app, monkeypatch):
    """A fake agent that checks and applies every version and knows one queued message."""
    queued = [
        {
            "queue_id": "4dLq2G0001z1bc",
            "queue_name": "deferred",
            "arrival_time": 1_800_000_000,
            "message_size": 1200,
            "sender": "app@example.com",
            "recipients": [{"address": "x@example.org", "delay_reason": "connection refused"}],
        }
    ]
    results = {
        "check": {"problems": []},
        "apply": {"problems": []},
        "queue_list": lambda a: queued,
        "hold": lambda a: {},
        "flush_all": lambda a: {},
        "delete": Refusal("no such message"),
    }
    async with fake_agent(results) as fake:
        monkeypatch.setattr(app.state, "agent", AgentClient(fake.path))
        yield fake


async def test_test_apply_versions_diff_and_rollback(client, writer, agent, app):
    await client.post("/api/v1/sender-domains", json={"name": "example.com"}, headers=writer)
    await client.post("/api/v1/sender-domains", json={"name": "example.org"}, headers=writer)

    tested = await client.post("/api/v1/config/test", headers=writer)
    assert tested.status_code == 200, tested.text
    assert tested.json()["ok"] is True and tested.json()["version"] == 2
    assert "example.org" in tested.json()["diff"]
    assert agent.args("check")[0]["version"] == 2
    applied = await client.post("/api/v1/config/apply", headers=writer)
    assert applied.status_code == 200 and applied.json()["applied"] is True
    [entry] = await _audit("config.apply")
    assert (entry["actor"], entry["target"], entry["outcome"]) == ("token:ci", "version 2", "ok")

    versions = (await client.get("/api/v1/versions", headers=writer)).json()
    assert versions["applied_here"] == 2
    assert [(v["number"], v["author"]) for v in versions["versions"]] == [
        (2, "token:ci"),
        (1, "token:ci"),
    ]
    diff = (await client.get("/api/v1/versions/diff?a=2&b=1", headers=writer)).json()
    assert (diff["a"], diff["b"]) == (1, 2)
    assert {"kind": "added", "left": "", "right": "sender-domain example.org"} in diff["rows"]

    rolled = await client.post("/api/v1/versions/1/rollback", headers=writer)
    assert rolled.status_code == 201 and rolled.json()["config_version"] == 3
    assert [d["name"] for d in await SenderDomain.select(SenderDomain.name)] == ["example.com"]
    [rollback] = await _audit("config.rollback")
    assert rollback["actor"] == "token:ci"
    missing = await client.post("/api/v1/versions/99/rollback", headers=writer)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "There is no config version 99."


async def test_a_failed_apply_answers_422_and_keeps_the_running_version(client, writer, agent, app):
    await client.post("/api/v1/sender-domains", json={"name": "example.com"}, headers=writer)
    agent.results["apply"] = {"problems": ["postfix check: broken map"]}
    response = await client.post("/api/v1/config/apply", headers=writer)
    assert response.status_code == 422
    assert response.json()["problems"] == ["postfix check: broken map"]
    assert response.json()["applied"] is False
    assert (await client.get("/api/v1/versions", headers=writer)).json()["applied_here"] is None
    [entry] = await _audit("config.apply")
    assert entry["outcome"] == "failed" and entry["actor"] == "token:ci"


async def test_queue_actions_go_through_the_agent_and_are_audited(client, writer, agent):
    listing = await client.get("/api/v1/queue?reason=refused", headers=writer)
    assert listing.status_code == 200
    assert listing.json()["total"] == 1
    assert listing.json()["entries"][0]["queue_id"] == "4dLq2G0001z1bc"
    assert (await client.get("/api/v1/queue?sender=nobody", headers=writer)).json()["entries"] == []

    held = await client.post("/api/v1/queue/4dLq2G0001z1bc/hold", headers=writer)
    assert held.json() == {"action": "hold", "target": "4dLq2G0001z1bc", "count": None}
    assert agent.args("hold") == [{"queue_id": "4dLq2G0001z1bc"}]
    flushed = await client.post("/api/v1/queue/flush", headers=writer)
    assert flushed.status_code == 200 and agent.verbs.count("flush_all") == 1
    refused = await client.post("/api/v1/queue/4dLq2G0001z1bc/delete", headers=writer)
    assert refused.status_code == 409 and refused.json()["detail"] == "no such message"
    unknown = await client.post("/api/v1/queue/4dLq2G0001z1bc/explode", headers=writer)
    assert unknown.status_code == 404 and "There is no queue action explode" in unknown.text

    rows = await AuditLog.select().where(AuditLog.action.like("queue.%")).order_by(AuditLog.id)
    assert [(r["actor"], r["action"], r["target"], r["outcome"]) for r in rows] == [
        ("token:ci", "queue.hold", "4dLq2G0001z1bc", "ok"),
        ("token:ci", "queue.flush", "*", "ok"),
        ("token:ci", "queue.delete", "4dLq2G0001z1bc", "failed"),
    ]


async def test_the_queue_list_without_the_agent_answers_503(client, writer):
    response = await client.get("/api/v1/queue", headers=writer)
    assert response.status_code == 503
    assert "agent" in response.json()["detail"]


# Schema, body cap, real HTTPS -----------------------------------------------------------------


async def test_the_openapi_schema_documents_every_v1_path_with_body_examples(client, app):
    schema = (await client.get("/api/schema/openapi.json")).json()
    paths = {
        "/api/v1/sender-domains",
        "/api/v1/sender-domains/{name}",
        "/api/v1/routes",
        "/api/v1/routes/{domain}",
        "/api/v1/trusted-networks",
        "/api/v1/trusted-networks/{cidr}",
        "/api/v1/config/test",
        "/api/v1/config/apply",
        "/api/v1/versions",
        "/api/v1/versions/{number}",
        "/api/v1/versions/diff",
        "/api/v1/versions/{number}/rollback",
        "/api/v1/queue",
        "/api/v1/queue/flush",
        "/api/v1/queue/release-held",
        "/api/v1/queue/{queue_id}/{action}",
    }
    assert paths <= set(schema["paths"]), paths - set(schema["paths"])
    with_bodies = 0
    for path in paths:
        for operation in schema["paths"][path].values():
            body = operation.get("requestBody")
            if body is None:
                continue
            with_bodies += 1
            examples = body["content"]["application/json"]["schema"].get("examples")
            assert examples, f"{path}: a request body without an example"
    assert with_bodies == 6  # POST and PUT of domains, routes and networks
    route_out = schema["components"]["schemas"]["RouteOut"]["properties"]
    assert "auth_password" in route_out and "auth_password_enc" not in route_out


async def test_an_oversized_body_is_refused_on_every_v1_change(client, app, writer):
    changes = [
        (method, route.path)
        for route in app.routes
        if route.path.startswith("/api/v1/")
        for method, (handler, _) in getattr(route, "route_handler_map", {}).items()
        if "data" in handler.parsed_fn_signature.parameters
    ]
    assert len(changes) == 6  # POST and PUT of domains, routes and networks
    padded = json.dumps({"name": "example.com"}) + " " * api.MAX_BODY_BYTES
    headers = writer | {"content-type": "application/json"}
    for method, path in changes:
        url = path.replace("{name:str}", "example.com").replace("{domain:str}", "example.com")
        url = url.replace("{cidr:path}", "10.0.0.0/8")
        response = await client.request(method, url, content=padded, headers=headers)
        assert response.status_code == 413, (method, path)
    assert await _versions() == 0


async def test_the_whole_automation_round_trip_over_real_https(app, settings):
    """uvicorn with a self-signed certificate on 127.0.0.1; a write token limited to loopback."""
    node = create_app(settings)
    token = await tokens.create("pipeline", "write", "test", networks="127.0.0.0/8")
    headers = {"authorization": f"Bearer {token}"}
    async with serve_https(node, settings) as server:
        assert server.url.startswith("https://127.0.0.1:")
        # Trust exactly the node's self-signed certificate, as a pinned peer does.
        port = int(server.url.rsplit(":", 1)[1])
        pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
        digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
        assert ":".join(digest[i : i + 2] for i in range(0, 64, 2)) == server.fingerprint
        trust = ssl.create_default_context(cadata=pem)
        async with httpx.AsyncClient(base_url=server.url, verify=trust, headers=headers) as https:
            await _round_trip(https)
    row = await ApiToken.select().where(ApiToken.name == "pipeline").first()
    assert row["last_used_ip"] == "127.0.0.1"
    rows = await AuditLog.select().where(AuditLog.actor == "token:pipeline")
    assert {r["action"] for r in rows} == {"domain.add", "route.set", "config.rollback"}


async def _round_trip(https: httpx.AsyncClient) -> None:
    domain = await https.post("/api/v1/sender-domains", json={"name": "example.com"})
    assert domain.status_code == 201, domain.text
    route = await https.put("/api/v1/routes/example.com", json=ROUTE)
    assert route.status_code == 201 and route.json()["route"]["auth_password"] == "set"
    tested = await https.post("/api/v1/config/test")
    # No agent runs here: the report says Postfix did not check instead of claiming it did.
    assert tested.status_code == 200
    assert tested.json()["notes"][0].startswith("Postfix did not check this version")
    versions = (await https.get("/api/v1/versions")).json()["versions"]
    assert [v["number"] for v in versions] == [2, 1]
    rolled = await https.post("/api/v1/versions/1/rollback")
    assert rolled.status_code == 201
    assert (await https.get("/api/v1/routes/example.com")).status_code == 404
