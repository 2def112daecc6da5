"""The GUI always answers, in real headless Chromium against `mailrelay serve`: an action that
takes a moment shows that it runs, a failed one shows its message where the user acted, and the
switchover's steps arrive by themselves while the page stays where it is.

This node holds the VIP (127.0.0.1, on the loopback) and has no peer configured: a switchover
passes its first step and stops at the second, as it would with an unreachable peer.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import Gui, Server

pytestmark = pytest.mark.browser

SERVER_ENV = {"VIP_ADDRESS": "127.0.0.1"}
PASSWORD = "browser-answers-Pa55word"
DOMAIN = "answers.example"


def _ready(page: Page) -> None:
    """htmx and static/app.js bound (both deferred scripts run before DOMContentLoaded ends)."""
    page.wait_for_function(
        "() => typeof window.htmx === 'object' && document.readyState !== 'loading'"
    )


def _log_in(gui: Gui, server: Server) -> Page:
    """As the first admin; the first test of the module changes the one-time password."""
    page = gui.page
    page.goto(gui.url("/login"))
    page.locator("#f-username").fill("admin")
    page.locator("#f-password").fill(PASSWORD)
    page.locator("#login-form button[type=submit]").click()
    page.wait_for_load_state()
    if urlsplit(page.url).path == "/login":  # not changed yet: the one-time password
        gui.problems.console_errors.clear()  # the refused login's 4xx
        page.locator("#f-username").fill("admin")
        page.locator("#f-password").fill(server.admin_password)
        page.locator("#login-form button[type=submit]").click()
        page.locator("#f-current_password").fill(server.admin_password)
        page.locator("#f-new_password").fill(PASSWORD)
        page.locator("#f-new_password_again").fill(PASSWORD)
        page.locator("form[action='/password'] button[type=submit]").click()
    expect(page.locator("header.top")).to_contain_text("Logged in as admin")
    return page


def _add_domain(page: Page, gui: Gui, name: str) -> None:
    page.goto(gui.url("/domains"))
    _ready(page)
    page.locator("#domain-form #f-name").fill(name)
    page.locator("#domain-form button[type=submit]").click()
    expect(page.locator("#domains tbody tr", has_text=name)).to_have_count(1)


def test_test_configuration_shows_that_it_runs_until_its_report_arrives(
    gui: Gui, server: Server
) -> None:
    page = _log_in(gui, server)
    _add_domain(page, gui, DOMAIN)
    page.goto(gui.url("/versions"))
    _ready(page)
    held: list[Route] = []
    page.route("**/config/test", lambda route: held.append(route))
    indicator = page.locator("form[action='/config/test'] .htmx-indicator")
    expect(indicator).to_be_hidden()
    page.locator("#test-config").click()
    # The answer is held back: meanwhile the form says it runs and its buttons wait.
    expect(indicator).to_be_visible()
    expect(indicator).to_have_text("Testing…")
    expect(page.locator("form[action='/config/test']")).to_have_class(re.compile("htmx-request"))
    expect(page.locator("#test-config")).to_be_disabled()
    expect(page.locator("#apply-config")).to_be_disabled()
    assert len(held) == 1
    held[0].continue_()
    expect(page.locator("#config-report .report")).to_be_visible()
    expect(indicator).to_be_hidden()
    expect(page.locator("#test-config")).to_be_enabled()
    assert gui.problems.all() == []


def test_a_failed_action_shows_its_message_next_to_the_button_used(
    gui: Gui, server: Server
) -> None:
    page = _log_in(gui, server)
    _add_domain(page, gui, "gone.example")
    page.goto(gui.url("/domains"))
    _ready(page)
    row = page.locator("#domains tbody tr", has_text="gone.example")
    # Someone else deletes the domain while this page still shows it.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "__Host-csrftoken")
    gone = page.context.request.post(
        gui.url("/domains/gone.example/delete"),
        headers={"x-csrftoken": token, "hx-request": "true"},
    )
    assert gone.ok
    page.on("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete").click()
    message = row.locator("form + .request-error")
    expect(message).to_have_text("There is no sender domain gone.example.")
    expect(message).to_have_attribute("role", "alert")
    assert urlsplit(page.url).path == "/domains"
    gui.problems.expected_console_error("404", "/domains/gone.example/delete")
    # htmx reports the error answer on the console too.
    gui.problems.console_errors = [
        (text, url)
        for text, url in gui.problems.console_errors
        if "Response Status Error" not in text
    ]
    assert gui.problems.all() == []


def test_the_switchover_steps_arrive_while_the_page_stays(gui: Gui, server: Server) -> None:
    page = _log_in(gui, server)
    page.goto(gui.url("/cluster"))
    _ready(page)
    page.on("dialog", lambda dialog: dialog.accept())
    with page.expect_request(re.compile(r"/cluster/switchover/[\w-]+$")) as polled:
        page.locator("#run-switchover").click()
    assert polled.value.headers.get("hx-request") == "true"
    outcome = page.locator("#switchover-outcome")
    expect(outcome).to_have_text("The switchover failed.")
    expect(page.locator("#step-vip")).to_contain_text("OK")
    expect(page.locator("#step-peer")).to_contain_text("failed")
    expect(page.locator("#step-peer")).to_contain_text("the peer cannot be asked")
    expect(page.locator("#switchover-steps tr.step-skipped")).to_have_count(5)
    assert urlsplit(page.url).path == "/cluster"
    # Finished: no more polling.
    expect(page.locator("#switchover-run")).not_to_have_attribute("hx-trigger", "every 1s")
    assert gui.problems.all() == []


def test_the_dashboard_asks_for_the_peers_traffic_after_it_loaded(gui: Gui, server: Server) -> None:
    """The page comes with this node's figures; htmx then swaps in both nodes' (here: the peer
    is not configured, which the traffic section says instead of waiting)."""
    page = _log_in(gui, server)
    page.goto(gui.url("/"))
    expect(page.locator("#peer-traffic-unavailable")).to_contain_text(
        "The peer's figures are unavailable: not configured: PEER_API_URL"
    )
    expect(page.locator("#peer-traffic-pending")).to_have_count(0)
    expect(page.locator("#traffic-1h td.this").first).to_have_text("0")
    assert gui.problems.all() == []
