"""The peer's files are untrusted input, in the lab: a replica and a shadow store that a
compromised peer (or a stolen sync key or shadow token) filled with links to other directories
and a forbidden sender's message are taken over on promotion without anything outside them
being read or deleted, and without the forbidden message being delivered. Runs after
test_lab.py on the same lab and works with whichever node holds the VIP."""

from __future__ import annotations

import time

import pytest

from tests.lab.labtools import lab, swaks, vip_owner, wait_for

pytestmark = pytest.mark.lab

REPLICA = "/var/spool/mailrelay-replica"
SHADOWS = "/var/spool/mailrelay-shadow"
# A shadow copy in the store's own format (made with the node's code), of a sender domain the
# relay does not allow, accepted "now" so that no prune drops it before the promotion.
FORBIDDEN_SHADOW = (
    "import sys, time; from app.replication.shadow_store import Envelope, encode; "
    "sys.stdout.buffer.write(encode(Envelope('4ZforbidABC', 'evil@forbidden.example', "
    "['you@dest.example'], '198.18.0.30', time.time()), "
    "b'Message-Id: <evil-lab@drill.test>\\r\\n\\r\\nx\\r\\n'))"
)
# Under /var/lib: the agent's unit sandbox hides /root and /home, and an attacker aims where
# the agent can reach.
VICTIM = "/var/lib/mailrelay-victim"
# Segment names as the store makes them: a link to the victim, and the forbidden shadow.
LINK_SEGMENT = "segment-00000000000000000002-0000abcd"
FORBIDDEN_SEGMENT = "segment-00000000000000000003-0000abcd"


def other(node: str) -> str:
    return "b" if node == "a" else "a"


def sync_running(node: str) -> bool:
    unit = "mailrelay-queue-sync.service"
    # A oneshot run under way is "activating", not "active".
    state = lab("exec", node, "systemctl", "is-active", unit, check=False).stdout.strip()
    return state in ("active", "activating", "deactivating")


def vrrp_journal(node: str, since: str) -> str:
    return lab(
        "exec", node, "journalctl", "-u", "mailrelay-vrrp-events", "--since", since, "--no-pager"
    ).stdout


def test_a_hostile_replica_and_shadow_store_are_imported_with_nothing_outside_touched(up):
    active = vip_owner()
    passive = other(active)
    wait_for(
        lambda: '"BACKUP"' in lab("exec", passive, "cat", "/run/mailrelay-vrrp/vrrp.state").stdout,
        180,
        f"{passive} to be a ready BACKUP",
    )
    # The active node's syncs would replace the planted replica: stop them first, and let a
    # run that is under way end.
    lab("exec", active, "systemctl", "stop", "mailrelay-queue-sync.timer")
    wait_for(lambda: not sync_running(active), 60, f"the sync under way on {active} to end")
    plant = (
        f"mkdir -p {VICTIM}/sub && echo precious > {VICTIM}/keep && echo deep > {VICTIM}/sub/f "
        f"&& mkdir -p {REPLICA}/incoming {REPLICA}/deferred "
        f"&& ln -sfn {VICTIM} {REPLICA}/deferred/A "
        f"&& ln -sfn {VICTIM}/keep {REPLICA}/incoming/4XyZaBcDeFgH "
        f"&& chown -h mailrelay-sync: {REPLICA}/deferred/A {REPLICA}/incoming/4XyZaBcDeFgH"
        f"&& ln -sfn {VICTIM}/keep {SHADOWS}/{LINK_SEGMENT} "
        f'&& PYTHONPATH=/opt/mailrelay /opt/mailrelay/venv/bin/python -c "{FORBIDDEN_SHADOW}" '
        f"> {SHADOWS}/{FORBIDDEN_SEGMENT} "
        f"&& chown -h mailrelay-sync: {SHADOWS}/{LINK_SEGMENT} {SHADOWS}/{FORBIDDEN_SEGMENT}"
    )
    lab("exec", passive, "sh", "-c", plant)
    since = "@" + lab("exec", passive, "date", "+%s").stdout.strip()
    stopped = time.monotonic()
    lab("exec", active, "systemctl", "stop", "keepalived")
    try:
        wait_for(lambda: vip_owner() == passive, 30, f"the VIP on {passive}")
        wait_for(
            lambda: "took over" in vrrp_journal(passive, since),
            60,
            f"{passive} to import its replica",
        )
        print(
            f"\npromotion of {passive} with a hostile replica: {time.monotonic() - stopped:.1f} s"
        )
        files = lab("exec", passive, "find", VICTIM, "-type", "f").stdout.split()
        assert sorted(files) == [f"{VICTIM}/keep", f"{VICTIM}/sub/f"]
        assert lab("exec", passive, "cat", f"{VICTIM}/keep").stdout == "precious\n"
        journal = vrrp_journal(passive, since)
        assert "refused to take over" in journal and "4XyZaBcDeFgH" in journal, journal[-2000:]
        assert LINK_SEGMENT in journal and "4ZforbidABC" in journal, journal[-2000:]
        assert "forbidden.example" in journal, journal[-2000:]
        # The relay goes on working on the new active node.
        assert "250 2.0.0 Ok: queued" in swaks("client", "pay@billing.example")
        lab("exec", passive, "postqueue", "-f", check=False)
        time.sleep(5)
        for sink in ("sink1", "sink2"):
            assert "<evil-lab@drill.test>" not in lab("sink", sink, "list").stdout
    finally:
        lab("exec", active, "systemctl", "start", "keepalived")
        lab("exec", active, "systemctl", "start", "mailrelay-queue-sync.timer")
        lab("exec", passive, "sh", "-c", f"rm -rf {VICTIM} {REPLICA}/deferred/A "
            f"{REPLICA}/incoming/4XyZaBcDeFgH {SHADOWS}/{LINK_SEGMENT} "
            f"{SHADOWS}/{FORBIDDEN_SEGMENT} {SHADOWS}/refused-{FORBIDDEN_SEGMENT}")  # fmt: skip
