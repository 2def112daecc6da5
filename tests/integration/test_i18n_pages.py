"""Server-side messages, dates and numbers in the user's language on real pages: the app's own,
the privileged agent's (the real agent on a unix socket), the config pipeline's and the cluster
panel's, with what a program printed quoted as it is inside a German sentence."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.agent.client import AgentClient
from app.agent.postfix import PostfixTools
from app.agent.server import Agent
from app.auth import tokens
from app.config import service
from app.settings import load_agent_settings
from app.web.app import create_app
from tests.clusterpeer import fake_agent, passive_slave, peer_settings, serve_https
from tests.conftest import csrf

GERMAN = {"accept-language": "de-DE,de;q=0.9,en;q=0.5"}


async def _post(client, path, data, headers=None, htmx=False):
    headers = csrf(client) | (headers or {}) | ({"hx-request": "true"} if htmx else {})
    return await client.post(path, data=data, headers=headers, follow_redirects=False)


async def test_a_duplicate_sender_domain_is_refused_in_german_on_a_german_page(login_as):
    await service.add_domain(service.Actor("t"), "example.com")
    client = await login_as("operator")
    response = await _post(client, "/domains", {"name": "Example.com"}, GERMAN)
    assert response.status_code == 422
    assert "Die Absenderdomain example.com gibt es bereits." in response.text
    assert "exists already" not in response.text
    english = await _post(client, "/domains", {"name": "example.com"}, htmx=True)
    assert "The sender domain example.com exists already." in english.text


async def test_the_language_chosen_in_the_profile_turns_field_errors_german(login_as):
    client = await login_as("operator")
    assert (await _post(client, "/language", {"language": "de"})).status_code == 303
    response = await _post(client, "/networks", {"cidr": "10.0.0.0"}, htmx=True)
    assert response.status_code == 422
    assert "Geben Sie auch die Präfixlänge an, wie 10.0.0.0/32 oder 10.0.0.0/8." in response.text
    wide = await _post(client, "/networks", {"cidr": "10.0.0.0/4"}, htmx=True)
    assert "10.0.0.0/4 hat gesetzte Host-Bits; meinten Sie 0.0.0.0/4?" in wide.text


async def test_a_nested_reason_is_translated_inside_its_sentence(login_as):
    await service.add_domain(service.Actor("t"), "example.com")
    client = await login_as("operator")
    response = await _post(
        client,
        "/routes/example.com",
        {"host": "127.0.0.1", "port": "25", "tls_mode": "may"},
        GERMAN,
        htmx=True,
    )
    assert response.status_code == 422
    assert "Der Relay-Host 127.0.0.1 ist eine Loopback-Adresse: Eine Route muss" in response.text


async def test_a_missing_sender_domain_is_reported_in_german(login_as):
    client = await login_as("readonly")
    response = await client.get("/routes/nowhere.example", headers=GERMAN)
    assert response.status_code == 404
    assert "Es gibt keine Absenderdomain nowhere.example." in response.text


async def test_which_route_explains_a_bad_address_in_german(login_as):
    client = await login_as("readonly")
    response = await _post(
        client,
        "/routes/which",
        {"sender": "a b@example.com", "recipient": "b@example.net"},
        GERMAN,
        htmx=True,
    )
    assert "Die Absenderadresse darf keine Leerzeichen enthalten." in response.text


async def test_dates_are_written_the_german_way_on_a_german_page(login_as):
    await service.add_domain(service.Actor("t"), "example.com")
    client = await login_as("readonly")
    german = (await client.get("/versions", headers=GERMAN)).text
    english = (await client.get("/versions")).text
    assert re.search(r"<td>\d\d\.\d\d\.\d{4} \d\d:\d\d:\d\d</td>", german)
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", english)


# -- what the privileged agent, the pipeline and the cluster say, on German pages ----------------


@contextlib.asynccontextmanager
async def real_agent(folder: Path) -> AsyncIterator[AgentClient]:
    """The real agent (app/agent/server.py) on a unix socket, with PostfixTools against a
    scratch Postfix configuration that postconf and postmap read; no Postfix runs, so
    `postqueue` fails as it does on a node whose Postfix is down. This test runs as root: the
    agent lets it use every verb."""
    config = folder / "etc"
    config.mkdir()
    (config / "main.cf").write_text(f"queue_directory = {folder / 'spool'}\n")
    (config / "master.cf").write_text("")
    agent = Agent(PostfixTools(config, folder / "maps"), load_agent_settings({}))
    path = folder / "agent.sock"
    server = await asyncio.start_unix_server(agent.serve_connection, path=str(path))
    try:
        yield AgentClient(path, timeout=60)
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def agent(app, monkeypatch):
    if shutil.which("postconf") is None:
        pytest.skip("needs Postfix's postconf and postmap")
    folder = Path(tempfile.mkdtemp(prefix="mr-i18n-"))  # short: unix socket paths
    try:
        async with real_agent(folder) as client:
            monkeypatch.setattr(app.state, "agent", client)
            yield client
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_the_agents_refusal_of_a_queue_action_is_german_on_a_german_page(login_as, agent):
    client = await login_as("operator")
    await client.get("/queue")
    response = await _post(client, "/queue/abc/hold", {}, GERMAN, htmx=True)
    assert response.status_code == 409
    assert "keine Queue-ID: &#39;abc&#39;" in response.text
    assert "not a queue ID" not in response.text
    english = await _post(client, "/queue/abc/hold", {}, htmx=True)
    assert "not a queue ID: &#39;abc&#39;" in english.text


async def test_what_postfix_printed_is_quoted_as_it_is_inside_a_german_sentence(login_as, agent):
    client = await login_as("readonly")
    page = (await client.get("/queue", headers=GERMAN)).text
    # postqueue's own words, untranslated, in a German frame; never half of each.
    assert re.search(r"postqueue -j meldete: postqueue: fatal: chdir \S+spool: No such file", page)


async def test_test_configuration_shows_the_agents_problems_in_german(login_as, agent):
    await service.add_domain(service.Actor("t"), "example.com")
    client = await login_as("operator")
    german = (await _post(client, "/config/test", {}, GERMAN, htmx=True)).text
    # The scratch main.cf lacks the product's settings: the agent's relay check says so.
    assert "main.cf smtpd_relay_restrictions = " in german
    assert "statt des Produktwerts &#39;permit_mynetworks, reject_unauth_destination&#39;" in german
    assert "Führen Sie `mailrelay agent postfix-settings` aus" in german
    assert "not the product&#39;s" not in german and "The configuration is valid" not in german
    english = (await _post(client, "/config/test", {}, htmx=True)).text
    assert "not the product&#39;s &#39;permit_mynetworks, reject_unauth_destination&#39;" in english


async def test_apply_without_an_agent_fails_in_german_with_the_systems_reason_quoted(
    login_as, app, monkeypatch
):
    await service.add_domain(service.Actor("t"), "example.com")
    monkeypatch.setattr(app.state, "agent", AgentClient(Path("/nonexistent/agent.sock")))
    client = await login_as("operator")
    page = (await _post(client, "/config/apply", {}, GERMAN, htmx=True)).text
    assert (
        "nicht übernommen: der privilegierte Agent ist unter /nonexistent/agent.sock nicht "
        "erreichbar: [Errno 2] No such file or directory"
    ) in page
    assert "Übernommene Version" not in page


async def test_the_dashboard_says_in_german_that_the_agent_is_unreachable(
    login_as, app, monkeypatch
):
    monkeypatch.setattr(app.state, "agent", AgentClient(Path("/nonexistent/agent.sock")))
    client = await login_as("readonly")
    page = (await client.get("/", headers=GERMAN)).text
    assert "der privilegierte Agent ist unter /nonexistent/agent.sock nicht erreichbar" in page
    assert "is not reachable at /nonexistent" not in page


async def test_the_cluster_panel_gives_its_reasons_in_german(login_as, app, monkeypatch):
    monkeypatch.setattr(app.state, "agent", AgentClient(Path("/nonexistent/agent.sock")))
    client = await login_as("readonly")
    panel = (await client.get("/cluster", headers=GERMAN | {"hx-request": "true"})).text
    assert "keepalived hat auf diesem Knoten noch keinen VRRP-Zustand gemeldet" in panel
    assert "unbekannt: der privilegierte Agent ist unter /nonexistent/agent.sock" in panel
    assert "nicht eingerichtet: PEER_API_URL, PEER_API_TOKEN und PEER_CERT_FINGERPRINT" in panel
    assert "has reported no VRRP state" not in panel


async def test_the_peers_reasons_arrive_as_messages_and_are_shown_in_german(
    login_as, app, settings, monkeypatch
):
    """A node's status crosses to its peer as JSON: each reason in English and as its message,
    which the other node shows in its user's language."""
    async with fake_agent({}) as agent:
        b = passive_slave(settings, agent.path)
        token = await tokens.create("a-to-b", "cluster", "test")
        async with serve_https(create_app(b), b) as peer:
            monkeypatch.setattr(app.state, "settings", peer_settings(settings, peer, token))
            client = await login_as("readonly")
            panel = (await client.get("/cluster", headers=GERMAN | {"hx-request": "true"})).text
    card = panel[panel.index('id="node-status-b"') :].split("</section>")[0]
    assert "keepalived hat auf diesem Knoten noch keinen VRRP-Zustand gemeldet" in card
    assert "dieser Knoten hält die VIP nicht: Seine Warteschlange wird nicht repliziert" in card
    assert "has reported no VRRP state" not in card
