"""What reaches the slave, in the lab: only a version the master applied. Runs first of the lab
modules (see conftest.py), so that its first test meets the lab right after `scripts/lab up`
returned; it gives the VIP back to a for the modules after it."""

from __future__ import annotations

import time

import pytest

from tests.lab.labtools import (
    MAILRELAY,
    A,
    B,
    gui_session,
    lab,
    swaks,
    switch_back_to,
    vip_owner,
    wait_for,
)

pytestmark = pytest.mark.lab

# A pull run follows the master for CONFIG_PULL_WAIT_SECONDS (50 s); a request waits at the master
# for at most the rest of that. Two of the old 8 s rounds are checked, and a whole run.
LONG_POLL_ROUND = 8


def refused_by(server: str, domain: str) -> bool:
    out = swaks("client", f"x@{domain}", server, "--quit-after", "RCPT")
    return "553 5.7.1" in out and "250 2.1.5" not in out


def accepted_by(server: str, domain: str) -> bool:
    return "250 2.1.5" in swaks("client", f"app@{domain}", server, "--quit-after", "RCPT")


def add_domain(client, token: str, domain: str) -> None:
    response = client.post(
        "/domains", data={"name": domain}, headers={"x-csrftoken": token}, follow_redirects=False
    )
    assert response.status_code == 303, response.text


def test_a_crash_of_a_right_after_up_leaves_b_relaying_what_a_applied_not_its_draft(up):
    assert vip_owner() == "a"
    client, token = gui_session(f"https://{A}:8443")
    draft = f"draft{int(time.time())}.example"
    add_domain(client, token, draft)  # saved on a, never applied
    lab("crash", "a")
    try:
        took = wait_for(
            lambda: "250 2.0.0 Ok: queued" in swaks("client", "app@app.example", timeout=3),
            60,
            "a 250 through the VIP from b",
        )
        print(f"\ncrash of a right after up: b relays through the VIP after {took:.1f} s")
        assert vip_owner() == "b"
        assert "250 2.0.0 Ok: queued" in swaks("client", "pay@billing.example")
        assert refused_by("198.18.0.100", draft), "b runs a's draft"
    finally:
        lab("boot", "a", timeout=300)
    # The modules after this one start from a as the active node: a planned switchover back.
    switch_back_to("a", "b")


def test_a_draft_or_a_failed_apply_on_a_never_reaches_b_and_an_apply_does_soon(up):
    client, token = gui_session(f"https://{A}:8443")
    domain = f"unapplied{int(time.time())}.example"
    add_domain(client, token, domain)
    # Longer than two long-poll rounds: b never enforces a draft, nor does a.
    until = time.monotonic() + 2 * LONG_POLL_ROUND + 2
    while time.monotonic() < until:
        assert refused_by(B, domain), "b enforces a draft of a"
        time.sleep(1)
    assert refused_by(A, domain)

    # An Apply that fails on a (its agent is gone) does not release the version either. The
    # queue sync (every 5 s) and the alerts want the agent's socket and would start it again
    # between its stop and the Apply: a drop-in of this boot makes every start of it fail its
    # condition until the Apply has failed.
    agent = ("mailrelay-agent.socket", "mailrelay-agent.service")
    held = "/run/systemd/system/mailrelay-agent.socket.d/held-by-test.conf"
    hold = (
        f"mkdir -p {held.rsplit('/', 1)[0]} && printf "
        f"'[Unit]\\nConditionPathExists=/nonexistent\\n' > {held} && systemctl daemon-reload"
    )
    lab("exec", "a", "bash", "-c", hold)
    try:
        # A start queued meanwhile (before the reload) cancels the stop job and then fails its
        # condition: stop again until both units are down.
        def agent_stopped() -> bool:
            lab("exec", "a", "systemctl", "stop", *agent, check=False)
            states = lab("exec", "a", "systemctl", "is-active", *agent, check=False).stdout.split()
            return all(state in ("inactive", "failed") for state in states)

        wait_for(agent_stopped, 60, "a's agent to stop")
        failed = client.post("/config/apply", headers={"x-csrftoken": token})
        assert "not applied" in failed.text, failed.text
        time.sleep(LONG_POLL_ROUND + 1)
        assert refused_by(B, domain), "b enforces a version whose apply failed on a"
    finally:
        lab("exec", "a", "bash", "-c", f"rm -f {held} && systemctl daemon-reload")
        lab("exec", "a", "systemctl", "start", "mailrelay-agent.socket")

    response = client.post("/config/apply", headers={"x-csrftoken": token})
    assert response.status_code == 200 and "not applied" not in response.text, response.text
    applied = time.monotonic()
    assert accepted_by(A, domain)
    elapsed = wait_for(lambda: accepted_by(B, domain), 20, f"node b to accept {domain}")
    elapsed = time.monotonic() - applied
    print(f"\nApply on a -> enforced by b's Postfix after {elapsed:.1f} s")
    assert elapsed <= 10 + 2, "the pull interval is 10 s; within it and 2 s more"
    status = lab("exec", "b", "runuser", "-u", "mailrelay", "--", "bash", "-c",
                 f"{MAILRELAY} config-status")  # fmt: skip
    assert "ready" in status.stdout.splitlines()[-1]
