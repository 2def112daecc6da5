"""The peer's files are untrusted input, in the lab: a replica that a compromised peer (or a
stolen sync key) filled with links to other directories is taken over on promotion without
anything outside the replica being read or deleted. Runs after test_lab.py on the same lab and
works with whichever node holds the VIP."""

from __future__ import annotations

import time

import pytest

from tests.lab.labtools import lab, swaks, vip_owner, wait_for

pytestmark = pytest.mark.lab

REPLICA = "/var/spool/mailrelay-replica"
# Under /var/lib: the agent's unit sandbox hides /root and /home, and an attacker aims where
# the agent can reach.
VICTIM = "/var/lib/mailrelay-victim"


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


def test_a_replica_with_links_to_another_directory_is_imported_with_it_untouched(up):
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
        # The relay goes on working on the new active node.
        assert "250 2.0.0 Ok: queued" in swaks("client", "pay@billing.example")
    finally:
        lab("exec", active, "systemctl", "start", "keepalived")
        lab("exec", active, "systemctl", "start", "mailrelay-queue-sync.timer")
        lab("exec", passive, "sh", "-c", f"rm -rf {VICTIM} {REPLICA}/deferred/A "
            f"{REPLICA}/incoming/4XyZaBcDeFgH")  # fmt: skip
