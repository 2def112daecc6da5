"""One lab for every lab test module: `scripts/lab up` before the first lab test, `scripts/lab
down` after the last (also when they fail). A lab test that fails shows both nodes' journals:
the lab is gone after the run, and with it what would tell why."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.lab.labtools import lab, why_not


@pytest.fixture(scope="session")
def up():
    reason = why_not()
    if reason:
        print(f"\nSKIP lab tests: {reason}")
        pytest.skip(reason)
    if os.environ.get("MAILRELAY_LAB_REUSE") == "1":
        # While writing a lab test: run it against a lab that `scripts/lab up` brought up (and
        # `scripts/lab install NODE` updated), and leave it up.
        yield lab("status").stdout
        return
    lab("down", check=False)
    try:
        # LAB_DEBIAN=13: the lab's nodes run Debian 13 (the web manager as its quadlet).
        result = lab("up", "--debian", os.environ.get("LAB_DEBIAN", "12"), timeout=900)
        yield result.stdout
    finally:
        lab("down", check=False, timeout=300)
        assert (
            "mrlab"
            not in subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True, check=False
            ).stdout
        )


# The journal lines a failed test shows per node: the last minutes of a drill.
JOURNAL_LINES = "600"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed or "up" not in item.fixturenames:
        return
    for node in ("a", "b"):
        journal = lab(
            "exec", node, "journalctl", "--no-pager", "-o", "short-iso-precise",
            "-n", JOURNAL_LINES, "-u", "mailrelay-*", "-u", "keepalived.service",
            "-u", "postfix@-.service", check=False, timeout=60,
        )  # fmt: skip
        report.sections.append((f"journal of node {node}", journal.stdout + journal.stderr))
