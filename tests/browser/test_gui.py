"""The GUI in real headless Chromium against `mailrelay serve`: one operator's first session.

Login with the default account, the forced password change, a sender domain (and an invalid one
refused inline by HTMX), a route with SMTP AUTH whose password never comes back, Test
configuration, the version diff, the German translation and log out, without a console error or
a Content-Security-Policy violation on the way.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, expect

from app.web.assets import HTMX_LOCAL_PATH, HTMX_SRI
from tests.browser.conftest import Gui, Server

pytestmark = pytest.mark.browser

NEW_PASSWORD = "browser-test-Pa55word"
DOMAIN = "example.com"
BAD_DOMAIN = "bad domain.com"
RELAY_HOST = "smtp.example.net"
AUTH_USER = "relay-user@example.com"
AUTH_PASSWORD = "S3cret-SMTP-pw-4711"
ROUTE_LINE = f"route {DOMAIN} -> [{RELAY_HOST}]:587 tls=encrypt auth={AUTH_USER}"


def expect_path(page: Page, path: str) -> None:
    expect(page).to_have_url(re.compile(rf"^https://127\.0\.0\.1:\d+{re.escape(path)}(\?.*)?$"))


def assert_htmx_loaded(page: Page) -> None:
    """htmx came from the local copy, with the pinned SRI hash, and is running."""
    script = page.locator(f'script[src="{HTMX_LOCAL_PATH}"]')
    expect(script).to_have_count(1)
    assert script.get_attribute("integrity") == HTMX_SRI
    # htmx (a deferred script) binds the hx-* attributes on DOMContentLoaded: wait for both, or a
    # quick click would submit the plain form instead.
    page.wait_for_function(
        "() => typeof window.htmx === 'object' && !!window.htmx.version"
        " && document.readyState !== 'loading'"
    )


def test_first_session_of_an_admin(gui: Gui, server: Server) -> None:
    page = gui.page

    # 1. Not logged in: / sends us to the login page.
    page.goto(gui.url("/"))
    expect_path(page, "/login")
    expect(page.locator("h1")).to_have_text("Log in")
    assert_htmx_loaded(page)
    page.locator("#f-username").fill("admin")
    page.locator("#f-password").fill(server.admin_password)
    page.locator("#login-form button[type=submit]").click()

    # 2. The first admin must change the one-time password before anything else.
    expect_path(page, "/password")
    expect(page.locator(".banner")).to_contain_text("You must change your password")
    expect(page.locator("header.top")).to_have_count(0)
    page.locator("#f-current_password").fill(server.admin_password)
    page.locator("#f-new_password").fill(NEW_PASSWORD)
    page.locator("#f-new_password_again").fill(NEW_PASSWORD)
    page.locator("form[action='/password'] button[type=submit]").click()
    expect_path(page, "/")
    expect(page.locator("main h1")).to_have_text("Dashboard")
    expect(page.locator("header.top")).to_contain_text("Logged in as admin")

    # 3. Sender domains: add one, then an invalid one is refused inline without a page load.
    page.locator("header.top nav a[href='/domains']").click()
    expect_path(page, "/domains")
    assert_htmx_loaded(page)
    form = page.locator("#domain-form")
    form.locator("#f-name").fill(DOMAIN)
    form.locator("#f-comment").fill("added by the browser test")
    form.locator("button[type=submit]").click()
    domains = page.locator("#domains tbody")
    expect(domains.locator("tr", has_text=DOMAIN)).to_have_count(1)
    expect(domains).to_contain_text("added by the browser test")

    assert_htmx_loaded(page)  # the add reloaded the page (HX-Redirect)
    page.evaluate("() => { window.__sameDocument = true; }")
    form = page.locator("#domain-form")
    form.locator("#f-name").fill(BAD_DOMAIN)
    with page.expect_response(
        lambda r: urlsplit(r.url).path == "/domains" and r.request.method == "POST"
    ) as answer:
        form.locator("button[type=submit]").click()
    response = answer.value
    assert response.status == 422
    assert response.request.headers.get("hx-request") == "true", "the form was not sent by htmx"
    error = page.locator("#domain-form .error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("must not contain spaces")
    expect(page.locator("#domain-form #f-name")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#domain-form #f-name")).to_have_value(BAD_DOMAIN)
    expect_path(page, "/domains")
    assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"
    page.reload()
    expect(page.locator("#domains tbody tr")).to_have_count(1)
    expect(page.locator("#domains tbody")).to_contain_text(DOMAIN)
    expect(page.locator("#domains tbody")).not_to_contain_text("bad domain")
    expect(page.locator("#domain-form .error")).to_have_count(0)

    # 4. Routes: edit the domain's route with SMTP AUTH; the password is never shown back.
    page.locator("header.top nav a[href='/routes']").click()
    expect_path(page, "/routes")
    row = page.locator("#routes tbody tr", has_text=DOMAIN)
    expect(row).to_contain_text("No route")
    row.get_by_role("link", name="Edit").click()
    expect_path(page, f"/routes/{DOMAIN}")
    form = page.locator("#route-form")
    form.locator("#f-host").fill(RELAY_HOST)
    form.locator("#f-port").fill("587")
    form.locator("#f-tls_mode").select_option("encrypt")
    form.locator("#f-auth_user").fill(AUTH_USER)
    form.locator("#f-auth_password").fill(AUTH_PASSWORD)
    form.locator("button[type=submit]").click()
    expect_path(page, "/routes")
    row = page.locator("#routes tbody tr", has_text=DOMAIN)
    expect(row).to_contain_text(f"[{RELAY_HOST}]:587")
    expect(row).to_contain_text("encrypt")
    expect(row).to_contain_text(f"{AUTH_USER} (Password: set)")
    assert AUTH_PASSWORD not in page.content()
    page.goto(gui.url(f"/routes/{DOMAIN}"))
    expect(page.locator("#route-form #f-host")).to_have_value(RELAY_HOST)
    expect(page.locator("#route-form #f-port")).to_have_value("587")
    expect(page.locator("#route-form #f-tls_mode")).to_have_value("encrypt")
    expect(page.locator("#route-form #f-auth_user")).to_have_value(AUTH_USER)
    expect(page.locator("#route-form #f-auth_password")).to_have_value("")
    expect(page.locator("#route-form")).to_contain_text("Leave empty to keep the stored password")
    assert AUTH_PASSWORD not in page.content()

    # 5. Config versions: Test configuration reports a valid config and the diff to the live maps.
    page.locator("header.top nav a[href='/versions']").click()
    expect_path(page, "/versions")
    assert_htmx_loaded(page)
    expect(page.locator("#versions tbody tr")).to_have_count(2)
    page.locator("#test-config").click()
    report = page.locator("#config-report")
    expect(report.locator("section.report")).to_have_count(1)
    expect(report.locator("h2")).to_contain_text("Version 2")
    assert report.locator(".problems li").all_inner_texts() == [], "Test configuration failed"
    expect(report.locator(".ok")).to_have_text("The configuration is valid.")
    diff = report.locator("pre.diff")
    expect(diff).to_contain_text(f"+{DOMAIN}\tOK")
    expect(diff).to_contain_text(f"+@{DOMAIN}\t[{RELAY_HOST}]:587")
    expect_path(page, "/versions")
    assert AUTH_PASSWORD not in page.content()

    # 6. Compare version 1 (the domain) with version 2 (its route) side by side.
    page.get_by_label("A 1", exact=True).check()
    page.get_by_label("B 2", exact=True).check()
    page.locator("#compare").click()
    expect_path(page, "/versions/diff")
    assert parse_qs(urlsplit(page.url).query) == {"a": ["1"], "b": ["2"]}
    table = page.locator("#diff")
    expect(table).to_be_visible()
    expect(table.locator("thead")).to_contain_text("Version 1")
    expect(table.locator("thead")).to_contain_text("Version 2")
    expect(table.locator("tr.same")).to_contain_text(f"sender-domain {DOMAIN}")
    added = table.locator("tr.added")
    expect(added).to_have_count(1)
    expect(added.locator("td").nth(0)).to_have_text("")
    expect(added.locator("td").nth(1)).to_contain_text(ROUTE_LINE)
    assert AUTH_PASSWORD not in page.content()

    # The version itself lists its settings; the password only as a fingerprint.
    page.get_by_role("link", name="Back").click()
    expect_path(page, "/versions")
    page.locator("#versions").get_by_role("link", name="2", exact=True).click()
    expect_path(page, "/versions/2")
    expect(page.locator("main h1")).to_have_text("Version 2")
    expect(page.locator("pre.config")).to_contain_text(ROUTE_LINE + " password=set#")
    assert AUTH_PASSWORD not in page.content()

    # 7. German, chosen in the header; the choice sticks to the user.
    page.goto(gui.url("/versions"))
    header = page.locator("header.top")
    header.locator("select[name=language]").select_option("de")
    header.get_by_role("button", name="OK").click()
    expect_path(page, "/versions")
    expect(page.locator("html")).to_have_attribute("lang", "de")
    expect(page.locator("header.top nav a[href='/domains']")).to_have_text("Absenderdomains")
    expect(page.locator("#test-config")).to_have_text("Konfiguration testen")
    expect(page.locator("#apply-config")).to_have_text("Änderungen übernehmen")
    expect(page.locator("header.top select[name=language]")).to_have_value("de")
    page.goto(gui.url("/domains"))
    expect(page.locator("main h1")).to_have_text("Absenderdomains")

    # 8. Log out: back on the login page, and / asks for a login again.
    page.locator("header.top form[action='/logout'] button[type=submit]").click()
    expect_path(page, "/login")
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("header.top")).to_have_count(0)
    page.goto(gui.url("/"))
    expect_path(page, "/login")
    page.goto(gui.url("/versions"))
    expect(page).to_have_url(re.compile(r"/login\?next=/versions$"))

    # The invalid domain's 422 is the answer htmx swaps in, asserted above; Chromium logs it.
    gui.problems.expected_console_error("status of 422", "/domains")
    problems = gui.problems.all()
    assert not problems, "\n".join(problems)
