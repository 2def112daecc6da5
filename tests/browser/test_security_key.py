"""A WebAuthn security key in real headless Chromium against `mailrelay serve`: a virtual
authenticator (Chrome DevTools protocol) is registered on the second-factor page and then logs
the user in after the password, without a console error or a Content-Security-Policy violation.

The page is opened as https://localhost:PORT: browsers refuse an IP address as a relying party,
and localhost is a host name that reaches the server bound to 127.0.0.1.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Gui, Server

pytestmark = pytest.mark.browser

NEW_PASSWORD = "browser-key-Pa55word"


def expect_path(page: Page, path: str) -> None:
    expect(page).to_have_url(re.compile(rf"^https://localhost:\d+{re.escape(path)}(\?.*)?$"))


def log_in(page: Page, base: str, password: str) -> None:
    page.goto(base + "/login")
    page.locator("#f-username").fill("admin")
    page.locator("#f-password").fill(password)
    page.locator("#login-form button[type=submit]").click()


def test_a_security_key_is_registered_and_then_logs_the_user_in(gui: Gui, server: Server) -> None:
    page = gui.page
    base = gui.base_url.replace("://127.0.0.1:", "://localhost:")
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    authenticator = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "usb",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )["authenticatorId"]

    # 1. The first login's forced password change, then the second-factor page.
    log_in(page, base, server.admin_password)
    expect_path(page, "/password")
    page.locator("#f-current_password").fill(server.admin_password)
    page.locator("#f-new_password").fill(NEW_PASSWORD)
    page.locator("#f-new_password_again").fill(NEW_PASSWORD)
    page.locator("form[action='/password'] button[type=submit]").click()
    expect_path(page, "/")
    page.locator("header.top nav a[href='/mfa']").click()
    expect_path(page, "/mfa")

    # 2. Register the key: the first factor comes with ten recovery codes, shown once.
    form = page.locator("#key-register")
    form.locator("input[name=name]").fill("desk key")
    form.locator("button[type=submit]").click()
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    [credential] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})[
        "credentials"
    ]
    assert credential["rpId"] == "localhost"
    page.goto(base + "/mfa")
    expect(page.locator("#factors tbody")).to_contain_text("desk key")
    expect(page.locator("#factors tbody")).to_contain_text("Security key")

    # 3. The same key again is refused by the browser (the server listed it as excluded).
    form = page.locator("#key-register")
    form.locator("button[type=submit]").click()
    expect(form.locator("[data-webauthn-error]")).to_be_visible()
    expect(form.locator("[data-webauthn-error]")).to_contain_text("The security key step failed")
    expect(page.locator("#factors tbody tr")).to_have_count(1)

    # 4. Log out; the password alone now leads to the second-factor step, nowhere else.
    page.locator("header.top form[action='/logout'] button[type=submit]").click()
    expect_path(page, "/login")
    log_in(page, base, NEW_PASSWORD)
    expect_path(page, "/mfa/verify")
    expect(page.locator("header.top")).to_have_count(0)
    page.goto(base + "/domains")
    expect_path(page, "/mfa/verify")

    # 5. The key logs the user in, and its signature counter moved on.
    page.locator("#key-verify button[type=submit]").click()
    expect_path(page, "/")
    expect(page.locator("main h1")).to_have_text("Dashboard")
    [used] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert used["signCount"] > credential["signCount"]
    page.goto(base + "/audit?action=mfa.verify")
    expect(page.locator("main table")).to_contain_text("mfa.verify")

    assert gui.problems.all() == []
