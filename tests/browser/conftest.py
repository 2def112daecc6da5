"""Fixtures for the browser tests: `mailrelay serve` as a real HTTPS server on its own database
(tests/nodeprocess.py), and a fresh headless Chromium page per test (Debian's /usr/bin/chromium
driven by Playwright).

The Playwright sync API is used inside plain `def` tests. It runs its own event loop, so the page
fixture is function-scoped: it is started and stopped inside one test, while no pytest-asyncio
fixture runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.nodeprocess import Server, serve_node
from tests.pgcluster import PostgresCluster

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
HTMX_LOCAL = ROOT / "static" / "vendor" / "htmx.min.js"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, pg_cluster: PostgresCluster) -> Iterator[Server]:
    """`mailrelay migrate` then `mailrelay serve` on a free port, against a database of its own
    (plus the settings a test module's SERVER_ENV adds)."""
    if not HTMX_LOCAL.is_file():
        pytest.skip(f"{HTMX_LOCAL} is missing: run scripts/test (its bootstrap fetches htmx)")
    with serve_node(
        pg_cluster, "mailrelay_browser", getattr(request.module, "SERVER_ENV", {})
    ) as running:
        yield running


@dataclass
class Problems:
    """What the page reported that a clean GUI never should."""

    console_errors: list[tuple[str, str]] = field(default_factory=list)  # (text, source url)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def expected_console_error(self, text: str, path: str) -> None:
        """Take out the one console error an intended answer causes (Chromium logs every 4xx)."""
        matches = [
            (t, url) for t, url in self.console_errors if text in t and urlsplit(url).path == path
        ]
        assert len(matches) == 1, f"expected one console error {text!r} for {path}: {matches}"
        self.console_errors.remove(matches[0])

    def all(self) -> list[str]:
        return [
            *(f"console: {text} ({url})" for text, url in self.console_errors),
            *(f"page error: {m}" for m in self.page_errors),
            *(f"CSP: {m}" for m in self.csp_violations),
            *(f"request failed: {m}" for m in self.failed_requests),
        ]


# Runs before any page script (Playwright injects it outside the page's CSP) and reports every
# CSP violation through the exposed binding, which survives navigations.
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__mailrelayCspViolation(
    `${e.violatedDirective} blocked ${e.blockedURI || "(inline)"} on ${e.documentURI}`
  );
});
"""


@dataclass
class Gui:
    page: Any
    base_url: str
    problems: Problems

    def url(self, path: str) -> str:
        return self.base_url + path


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Skip before any server starts when there is no browser to drive."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test does)")
    pytest.importorskip("playwright.sync_api")
    return CHROMIUM


@pytest.fixture
def gui(chromium: Path, server: Server) -> Iterator[Gui]:
    """A fresh Chromium page on the server, collecting console errors and CSP violations."""
    from playwright import sync_api

    problems = Problems()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(
                ignore_https_errors=True, locale="en-US", viewport={"width": 1280, "height": 900}
            )
            context.set_default_timeout(10_000)

            def report_csp(violation: str) -> None:
                problems.csp_violations.append(violation)

            context.expose_function("__mailrelayCspViolation", report_csp)
            context.add_init_script(_CSP_LISTENER)
            page = context.new_page()
            page.on(
                "console",
                lambda msg: (
                    problems.console_errors.append((msg.text, msg.location["url"]))
                    if msg.type == "error"
                    else None
                ),
            )
            page.on("pageerror", lambda exc: problems.page_errors.append(str(exc)))

            def request_failed(request: Any) -> None:
                # A navigation cancels the requests still open on the page it leaves (e.g. the
                # dashboard's polling): that is no fault. Anything else is.
                if request.failure != "net::ERR_ABORTED":
                    problems.failed_requests.append(
                        f"{request.method} {request.url}: {request.failure}"
                    )

            page.on("requestfailed", request_failed)
            yield Gui(page, server.base_url, problems)
            context.close()
        finally:
            browser.close()
