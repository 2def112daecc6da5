"""Running for years without anyone watching, in the lab: an alert reaches a person as an e-mail
that the relay itself delivers, once when it starts and once when it clears. Works with
whichever node holds the VIP."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from tests.lab.labtools import lab, vip_owner, wait_for, web_manager

pytestmark = pytest.mark.lab

# Where the lab's recording sink keeps what it received (scripts/lab.py, tests/smtptarget.py).
SINK1 = Path("/var/lib/mailrelay-lab/sinks/sink1")
ALERTS = ("ALERT_EMAIL=ops@dest.example", "ALERT_FROM=alerts@app.example")


def other(node: str) -> str:
    return "b" if node == "a" else "a"


def subjects() -> list[str]:
    found = []
    for path in SINK1.glob("[0-9]*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found.append(str(message["Subject"] or ""))
    return found


def test_a_peer_that_stops_answering_is_one_alert_mail_and_its_return_one_more(up):
    node = vip_owner()
    peer = other(node)
    # app.example's route is sink1: the alert goes out as any mail of that sender would.
    lab("install", node, *ALERTS, "ALERT_MIN_INTERVAL_SECONDS=0", timeout=600)
    started = f"[mailrelay {node}] ALERT: Peer unreachable"
    cleared = f"[mailrelay {node}] cleared: Peer unreachable"
    before = subjects()

    def after_a_run(subject: str) -> bool:
        lab("exec", node, "systemctl", "start", "mailrelay-alerts.service", check=False)
        return subject in subjects()

    try:
        web_manager(peer, "stop")
        wait_for(lambda: after_a_run(started), 120, f"'{started}' at sink1")
        web_manager(peer, "start")
        wait_for(lambda: after_a_run(cleared), 120, f"'{cleared}' at sink1")
    finally:
        web_manager(peer, "start")
        lab("install", node, "ALERT_EMAIL=", "ALERT_FROM=", "ALERT_MIN_INTERVAL_SECONDS=600",
            timeout=600)  # fmt: skip
    after = subjects()
    for subject in (started, cleared):
        assert after.count(subject) - before.count(subject) == 1, (subject, after)
