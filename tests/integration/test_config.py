"""Config changes through the GUI: each change is one version with its audit entry; validation
errors come back inline; rollback and diff; Test/Apply render the maps; secrets stay hidden."""

from __future__ import annotations

import json

from app.config import service
from app.db.tables import AppliedVersion, AuditLog, ConfigVersion, RelayRoute, SenderDomain
from app.postfix import pipeline
from tests.conftest import csrf

SECRET = "route-password-123"


async def _post(client, path, data=None, htmx=False):
    headers = csrf(client) | ({"hx-request": "true"} if htmx else {})
    return await client.post(path, data=data or {}, headers=headers, follow_redirects=False)


async def test_each_change_is_one_version_with_its_audit_entry(login_as):
    client = await login_as("operator")
    assert (await _post(client, "/domains", {"name": "Example.COM"})).status_code == 303
    assert (await _post(client, "/networks", {"cidr": "10.1.0.0/16"})).status_code == 303
    response = await _post(
        client,
        "/routes/example.com",
        {"host": "smtp.example.net", "port": "587", "tls_mode": "encrypt"},
    )
    assert response.status_code == 303
    versions = await ConfigVersion.select().order_by(ConfigVersion.number)
    assert [v["number"] for v in versions] == [1, 2, 3]
    assert all(v["author"] == "operator-user" for v in versions)
    snapshot = versions[-1]["snapshot"]
    snapshot = json.loads(snapshot) if isinstance(snapshot, str) else snapshot
    assert snapshot["sender_domains"][0]["name"] == "example.com"
    assert snapshot["sender_domains"][0]["route"]["port"] == 587
    assert snapshot["trusted_networks"] == [{"cidr": "10.1.0.0/16", "comment": ""}]
    actions = [
        row["action"]
        for row in await AuditLog.select().order_by(AuditLog.id)
        if row["action"] != "login"
    ]
    assert actions == ["domain.add", "network.add", "route.set"]
    entry = await AuditLog.select().where(AuditLog.action == "route.set").first()
    assert entry["source_ip"] == "198.18.0.30"
    assert "smtp.example.net" in entry["after"]
    assert '"version": 3' in entry["after"]


async def test_an_invalid_value_gets_an_inline_error_and_stores_nothing(login_as):
    client = await login_as("operator")
    response = await _post(client, "/domains", {"name": "exa mple.com"}, htmx=True)
    assert response.status_code == 422
    assert 'id="domain-form"' in response.text
    assert "<html" not in response.text  # a fragment for the HTMX swap
    assert "must not contain spaces" in response.text
    response = await _post(client, "/domains", {"name": "bad\nexample.com"})
    assert response.status_code == 422
    assert "<html" in response.text  # the whole page without JavaScript
    assert await SenderDomain.count() == 0
    assert await ConfigVersion.count() == 0


async def test_route_errors_name_each_field(login_as):
    await service.add_domain(service.Actor("t"), "example.com")
    client = await login_as("operator")
    response = await _post(
        client,
        "/routes/example.com",
        {"host": "smtp example", "port": "70000", "tls_mode": "sometimes"},
        htmx=True,
    )
    assert response.status_code == 422
    for message in ("relay host", "between 1 and 65535", "TLS mode must be one of"):
        assert message in response.text
    assert await RelayRoute.count() == 0


async def test_the_route_password_is_encrypted_and_never_shown_again(login_as, app):
    await service.add_domain(service.Actor("t"), "example.com")
    client = await login_as("operator")
    form = {
        "host": "smtp.example.net",
        "port": "587",
        "tls_mode": "encrypt",
        "auth_user": "relayuser",
        "auth_password": SECRET,
    }
    assert (await _post(client, "/routes/example.com", form)).status_code == 303
    route = await RelayRoute.select().first()
    assert SECRET not in route["auth_password_enc"]
    assert app.state.box.decrypt(route["auth_password_enc"]) == SECRET
    for path in (
        "/routes",
        "/routes/example.com",
        "/versions/2",
        "/versions/diff?a=1&b=2",
        "/audit",
    ):
        assert SECRET not in (await client.get(path)).text, path
    versions = await ConfigVersion.select()
    assert all(SECRET not in json.dumps(v["snapshot"]) for v in versions)
    audit = await AuditLog.select()
    assert all(SECRET not in json.dumps(row, default=str) for row in audit)
    # Saving again with an empty password keeps the stored one.
    form["auth_password"] = ""
    assert (await _post(client, "/routes/example.com", form)).status_code == 303
    route = await RelayRoute.select().first()
    assert app.state.box.decrypt(route["auth_password_enc"]) == SECRET


async def test_rollback_creates_a_new_version_equal_to_the_old_one(login_as):
    actor = service.Actor("t")
    await service.add_domain(actor, "one.example")
    await service.add_domain(actor, "two.example")
    await service.add_network(actor, "10.0.0.0/8")
    client = await login_as("operator")
    response = await _post(client, "/versions/1/rollback")
    assert response.status_code == 303
    assert response.headers["location"] == "/versions/4"
    names = [d["name"] for d in await SenderDomain.select()]
    assert names == ["one.example"]
    v1, v4 = await service.get_version(1), await service.get_version(4)
    assert v1["checksum"] == v4["checksum"]
    assert v4["comment"] == "Rollback to version 1"
    assert await AuditLog.exists().where(AuditLog.action == "config.rollback")


async def test_the_diff_shows_two_versions_side_by_side(login_as):
    actor = service.Actor("t")
    await service.add_domain(actor, "one.example")
    await service.add_network(actor, "10.0.0.0/8")
    await service.delete_domain(actor, "one.example")
    client = await login_as("readonly")
    added = (await client.get("/versions/diff?a=1&b=2")).text
    assert '<tr class="added"><td><code></code></td><td><code>trusted-network 10.0.0.0/8' in added
    assert '<tr class="same"><td><code>sender-domain one.example' in added
    removed = (await client.get("/versions/diff?a=3&b=2")).text  # order does not matter
    assert (
        '<tr class="removed"><td><code>sender-domain one.example</code></td><td><code></code>'
        in (removed)
    )


async def test_test_configuration_reports_the_diff_and_says_when_postfix_did_not_check(
    login_as,
):
    actor = service.Actor("t")
    await service.add_domain(actor, "example.com")
    await service.set_route(actor, None, "example.com", "smtp.example.net", 25, "may")
    client = await login_as("operator")
    response = await _post(client, "/config/test", htmx=True)
    assert response.status_code == 200
    assert "The configuration is valid." in response.text
    assert "+example.com\tOK" in response.text
    assert "+@example.com\t[smtp.example.net]:25" in response.text
    # No agent runs in this test: the report says so instead of pretending Postfix agreed.
    assert "Postfix did not check this version" in response.text
    assert await AppliedVersion.count() == 0


async def test_apply_without_the_agent_fails_cleanly_and_is_audited(login_as):
    await service.add_domain(service.Actor("t"), "example.com")
    client = await login_as("operator")
    response = await _post(client, "/config/apply", htmx=True)
    assert "not applied: the privileged agent is not reachable" in response.text
    assert await AppliedVersion.count() == 0
    entry = await AuditLog.select().where(AuditLog.action == "config.apply").first()
    assert entry["outcome"] == "failed"


async def test_a_slave_refuses_configuration_changes(login_as, app, monkeypatch):
    import dataclasses

    slave = dataclasses.replace(
        app.state.settings, cluster_mode="slave", master_api_url="https://198.18.0.11:8443"
    )
    monkeypatch.setattr(app.state, "settings", slave)
    client = await login_as("admin")
    response = await _post(client, "/domains", {"name": "example.com"})
    assert response.status_code == 403
    page = (await client.get("/domains")).text
    assert "managed on the master at https://198.18.0.11:8443" in page
    assert 'id="domain-form"' not in page
    assert await SenderDomain.count() == 0


async def test_a_version_number_taken_again_by_another_snapshot_is_rendered_anew(app):
    # Apply keeps recent renderings (the live maps every diff is taken against). When a
    # slave's pull fails to apply, its version is rolled back and the number comes again
    # with another snapshot: that one must not be answered from the rendering kept.
    box, actor = app.state.box, service.Actor("t")
    await service.add_domain(actor, "first.example")
    assert b"first.example\tOK" in (await pipeline.render_version(1, box)).files["sender_access"]
    await ConfigVersion.delete().where(ConfigVersion.number == 1)
    await SenderDomain.delete(force=True)
    assert await service.add_domain(actor, "second.example") == 1
    again = (await pipeline.render_version(1, box)).files["sender_access"]
    assert b"second.example\tOK" in again
    assert b"first.example" not in again
