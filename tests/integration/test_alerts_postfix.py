"""An alert e-mail goes out through the node's own real Postfix (tests/postfixhost.py): the
rendered mynetworks admits the node's loopback, so the alerts job's mail from 127.0.0.1 with a
sender of an allowed domain is relayed by the sender's route; a sender of another domain is
refused, and the mail stays refused for an address outside the trusted networks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import postfixhost
from tests.postfixhost import ALLOWED, OUTSIDE, RELAY
from tests.smtptarget import received

pytestmark = pytest.mark.postfix
ROOT = Path(__file__).resolve().parents[2]

# notify.send() as the job calls it, run inside the relay's network namespace.
SEND = """
import asyncio, datetime as dt, sys
from app.alerts import notify
from app.settings import load_settings
settings = load_settings({
    "DATABASE_URL": "postgresql://unused", "NODE_ID": "a",
    "ALERT_EMAIL": "ops@dest.example", "ALERT_FROM": sys.argv[1],
})
now = dt.datetime.now(dt.UTC)
message = notify.AlertNotice("a", "relay-a", "queue_size", True, now, "5000 messages", (), now)
try:
    asyncio.run(notify.send(settings, "email", message))
except notify.NotifyError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.fixture(scope="module")
def host():
    reason = postfixhost.available()
    if reason:
        pytest.skip(f"real Postfix tests need: {reason}")
    relay = postfixhost.PostfixHost().start()
    # A node's Postfix listens on all its addresses (Debian's default); the test relay only on
    # RELAY: add the loopback the alerts job uses.
    relay.exec("postconf", "-e", f"inet_interfaces = {RELAY}, 127.0.0.1")
    relay.exec("postfix", "stop")
    relay.exec("postfix", "start")
    yield relay
    relay.stop()


def _send(host: postfixhost.PostfixHost, sender: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        host.net(sys.executable, "-c", SEND, sender),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_an_alert_mail_from_the_node_itself_is_relayed_by_its_postfix(host):
    await postfixhost.apply_one_route(host)
    sent = _send(host, f"alerts@{ALLOWED}")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    for _ in range(150):
        got = received(host.sink1)
        if got:
            break
        time.sleep(0.1)
    assert [(m["mail_from"], m["rcpt_tos"]) for m in got] == [
        (f"alerts@{ALLOWED}", ["ops@dest.example"])
    ]
    mail = next(host.sink1.glob("1.eml")).read_text()
    assert "Subject: [mailrelay a] ALERT: Queue size" in mail
    assert "Auto-Submitted: auto-generated" in mail

    refused = _send(host, "alerts@elsewhere.example")
    assert refused.returncode == 3
    assert "553 5.7.1" in refused.stdout and "Sender domain not allowed" in refused.stdout

    # The loopback is trusted, the world is not.
    out = host.swaks(f"app@{ALLOWED}", "someone@dest.example", OUTSIDE)
    assert "554 5.7.1 <someone@dest.example>: Relay access denied" in out
    assert len(received(host.sink1)) == 1
