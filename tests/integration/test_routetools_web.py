"""Route tools through the app: read-only users may ask "Which route?", only operators may test a
route; the test shows its steps, never the password, and is audited without it."""

from __future__ import annotations

import datetime as dt
import json
import ssl

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from app.config import service
from app.db.tables import AppliedVersion, AuditLog
from tests.conftest import csrf
from tests.integration.test_routetest import (  # noqa: F401
    Handler,
    free_port,
    relay_addresses,
    tls_files,
)

SECRET = "route-Pa55word-xyz"
USER = "relay-user"


async def _post(client, path, data=None, htmx=False):
    headers = csrf(client) | ({"hx-request": "true"} if htmx else {})
    return await client.post(path, data=data or {}, headers=headers, follow_redirects=False)


async def _applied_config(app, settings, port: int = 2525, host: str = "192.0.2.25") -> None:
    """example.com with an authenticated route, example.org without: version 3, applied here
    (no agent runs in the tests, so the applied row is written directly)."""
    actor = service.Actor("t")
    await service.add_domain(actor, "example.com")
    await service.add_domain(actor, "example.org")
    number = await service.set_route(
        actor,
        app.state.box,
        "example.com",
        host=host,
        port=port,
        tls_mode="encrypt",
        auth_user=USER,
        auth_password=SECRET,
    )
    await AppliedVersion.insert(
        AppliedVersion(node_id=settings.node_id, number=number, applied_at=dt.datetime.now(dt.UTC))
    )


async def test_readonly_asks_which_route_and_sees_the_answer(login_as, app, settings):
    await _applied_config(app, settings)
    client = await login_as("readonly")
    page = await client.get("/routes/tools")
    assert page.status_code == 200
    assert 'id="which-form"' in page.text
    assert 'id="route-tests"' not in page.text  # testing is for operators
    assert 'href="/routes/tools"' in (await client.get("/routes")).text

    response = await _post(
        client, "/routes/which", {"sender": "Alice@Example.com", "recipient": "b@example.net"}, True
    )
    assert response.status_code == 200
    assert "<html" not in response.text  # the fragment for the HTMX swap
    assert 'id="which-verdict"' in response.text
    assert "allowed" in response.text
    assert "[192.0.2.25]:2525" in response.text
    assert "encrypt" in response.text
    assert USER in response.text
    assert SECRET not in response.text
    assert "Answered from config version 3" in response.text

    response = await _post(
        client, "/routes/which", {"sender": "x@example.org", "recipient": "b@example.net"}
    )
    assert response.status_code == 200
    assert "<html" in response.text  # without JavaScript: the whole page
    assert "direct to the recipient&#39;s MX" in response.text

    response = await _post(
        client, "/routes/which", {"sender": "x@sub.example.com", "recipient": "b@example.net"}
    )
    assert "rejected: sender domain not allowed" in response.text


async def test_which_route_explains_bad_input_inline(login_as, app, settings):
    await _applied_config(app, settings)
    client = await login_as("readonly")
    response = await _post(
        client, "/routes/which", {"sender": "not an address", "recipient": ""}, htmx=True
    )
    assert response.status_code == 422
    assert "<html" not in response.text
    assert "must not contain spaces" in response.text
    assert "an address like user@example.com" in response.text


async def test_which_route_without_an_applied_version_says_so(login_as):
    client = await login_as("readonly")
    response = await _post(
        client, "/routes/which", {"sender": "a@example.com", "recipient": "b@example.net"}, True
    )
    assert response.status_code == 422
    assert "No config version has been applied on this node yet" in response.text


async def test_readonly_may_not_test_a_route(login_as, app, settings):
    await _applied_config(app, settings)
    client = await login_as("readonly")
    await client.get("/routes/tools")
    response = await _post(client, "/routes/example.com/test", htmx=True)
    assert response.status_code == 403
    assert await AuditLog.count().where(AuditLog.action == "route.test") == 0


@pytest.fixture
def relay_target(tls_files, relay_addresses):  # noqa: F811
    """A STARTTLS relay host that wants AUTH with USER / SECRET."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    logins: list[str] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == SECRET
        logins.append(auth_data.login.decode())
        return (
            AuthResult(success=True, auth_data=auth_data)
            if ok
            else AuthResult(success=False, handled=False)
        )

    handler = Handler()
    host = relay_addresses[0]
    port = free_port(host)
    controller = Controller(
        handler,
        hostname=host,
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
    )
    controller.start()
    yield host, port, logins, handler
    controller.stop()


async def test_operator_tests_a_route_and_never_sees_the_password(
    login_as, app, settings, relay_target
):
    host, port, logins, handler = relay_target
    await _applied_config(app, settings, port, host)
    client = await login_as("operator")
    page = await client.get("/routes/tools")
    assert 'hx-post="/routes/example.com/test"' in page.text
    response = await _post(client, "/routes/example.com/test", htmx=True)
    assert response.status_code == 200
    text = response.text
    assert "<html" not in text
    assert 'id="test-steps"' in text
    for step in ("connect", "banner", "EHLO", "STARTTLS", "certificate", "AUTH", "QUIT"):
        assert f"<td>{step}</td>" in text
    assert " ms</td>" in text
    assert "CN=relay.test.invalid" in text  # the certificate's subject
    assert "Valid until" in text
    assert f"PLAIN as {USER}" in text
    assert SECRET not in text
    assert logins == [USER]
    assert handler.envelope_commands == []

    entry = await AuditLog.select().where(AuditLog.action == "route.test").first()
    assert entry["actor"] == "operator-user"
    assert entry["target"] == "example.com"
    assert entry["outcome"] == "ok"
    assert entry["source_ip"] == "198.18.0.30"
    assert SECRET not in json.dumps(entry, default=str)
    assert f"[{host}]:{port}" in entry["after"]

    # Without JavaScript the page comes back whole, with the report in it.
    response = await _post(client, "/routes/example.com/test")
    assert "<html" in response.text
    assert 'id="test-steps"' in response.text
    assert SECRET not in response.text


async def test_a_failed_test_is_audited_as_failed(login_as, app, settings, relay_addresses):  # noqa: F811
    port = free_port(relay_addresses[0])  # nothing listens here
    await _applied_config(app, settings, port, relay_addresses[0])
    client = await login_as("operator")
    response = await _post(client, "/routes/example.com/test", htmx=True)
    assert response.status_code == 200
    assert "The test found problems." in response.text
    entry = await AuditLog.select().where(AuditLog.action == "route.test").first()
    assert entry["outcome"] == "failed"
    assert "connect" in entry["after"]
    assert SECRET not in json.dumps(entry, default=str)


async def test_a_domain_without_route_has_nothing_to_test(login_as, app, settings):
    await _applied_config(app, settings)
    client = await login_as("operator")
    response = await _post(client, "/routes/example.org/test", htmx=True)
    assert response.status_code == 200
    assert "No route: mail goes out directly to the recipient" in response.text
    response = await _post(client, "/routes/nothing.example/test", htmx=True)
    assert response.status_code == 404


@pytest.fixture
def other_relay(tls_files, relay_addresses):  # noqa: F811
    """Another STARTTLS host that takes any AUTH and keeps every password it is sent."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    received: list[str] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        received.append(auth_data.password.decode())
        return AuthResult(success=True, auth_data=auth_data)

    host = relay_addresses[1]
    port = free_port(host)
    controller = Controller(
        Handler(),
        hostname=host,
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
    )
    controller.start()
    yield host, port, received
    controller.stop()


async def test_test_route_never_sends_the_stored_password_to_another_host(
    login_as, app, settings, relay_target, other_relay
):
    host, port, logins, _ = relay_target
    other_host, other_port, received = other_relay
    await _applied_config(app, settings, port, host)
    client = await login_as("operator")
    moved = {"host": other_host, "port": str(other_port), "tls_mode": "encrypt", "auth_user": USER}

    # Moving the route keeps no password, so the stored route still points at its own relay.
    await _post(client, "/routes/example.com", moved | {"auth_password": ""}, htmx=True)
    stored = await _post(client, "/routes/example.com/test", htmx=True)
    assert f"[{host}]:{port}" in stored.text and "All steps passed." in stored.text
    assert logins == [USER]

    # Testing the moved settings from the route form does not take the stored password along:
    # not to another host, another port, nor to the same relay over weaker TLS.
    for form in (
        moved,
        moved | {"host": host},
        {"host": host, "port": str(port), "tls_mode": "may"},
    ):
        response = await _post(client, "/routes/example.com/test", form | {"auth_user": USER}, True)
        assert "type the SMTP AUTH password to test them" in response.text
        assert 'id="test-steps"' not in response.text
    assert received == [] and logins == [USER]
    assert SECRET not in json.dumps(await AuditLog.select(), default=str)


async def test_test_route_sends_a_typed_password_and_the_stored_one_only_to_its_relay(
    login_as, app, settings, relay_target, other_relay
):
    host, port, logins, _ = relay_target
    other_host, other_port, received = other_relay
    await _applied_config(app, settings, port, host)
    client = await login_as("operator")
    typed = {
        "host": other_host,
        "port": str(other_port),
        "tls_mode": "encrypt",
        "auth_user": USER,
        "auth_password": "typed-Pa55word",
    }
    response = await _post(client, "/routes/example.com/test", typed, htmx=True)
    assert f"[{other_host}]:{other_port}" in response.text
    assert f"PLAIN as {USER}" in response.text and "typed-Pa55word" not in response.text
    assert received == ["typed-Pa55word"]
    entry = await AuditLog.select().where(AuditLog.action == "route.test").first()
    assert f"[{other_host}]:{other_port}" in entry["after"]

    # The route form's own settings, unchanged: the stored password goes to the stored relay.
    same = {"host": host, "port": str(port), "tls_mode": "encrypt", "auth_user": USER}
    response = await _post(client, "/routes/example.com/test", same, htmx=True)
    assert "All steps passed." in response.text
    assert logins == [USER] and received == ["typed-Pa55word"]

    # A test goes nowhere a route may not point.
    response = await _post(client, "/routes/example.com/test", same | {"host": "127.0.0.1"}, True)
    assert "is a loopback address" in response.text
    assert 'id="test-steps"' not in response.text


async def test_the_route_form_offers_a_test_of_its_settings(login_as, app, settings):
    await _applied_config(app, settings)
    client = await login_as("operator")
    page = (await client.get("/routes/example.com")).text
    assert 'hx-post="/routes/example.com/test"' in page
    assert 'formaction="/routes/example.com/test"' in page
    assert 'id="test-result"' in page
    readonly = await login_as("readonly")
    assert (
        'formaction="/routes/example.com/test"'
        not in (await readonly.get("/routes/example.com")).text
    )
