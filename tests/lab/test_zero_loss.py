"""Zero accepted-mail loss, in the lab: a 250 from the VIP means the message is on both nodes
(shadow copies), and queue sync goes on while the active node's PostgreSQL is down. Runs last of
the lab modules and works with whichever node holds the VIP."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.lab.labtools import (
    POSTGRESQL_UNIT,
    SENDER,
    VIP,
    A,
    B,
    gui_session,
    lab,
    swaks,
    vip_owner,
    wait_for,
)

pytestmark = pytest.mark.lab

REPLICA = "/var/spool/mailrelay-replica"
COUNTERS = "/var/lib/mailrelay-shadow-milter/counters.json"


def other(node: str) -> str:
    return "b" if node == "a" else "a"


def ready_backup(node: str) -> bool:
    state = lab("exec", node, "cat", "/run/mailrelay-vrrp/vrrp.state", check=False).stdout
    return '"BACKUP"' in state


def sync_running(node: str) -> bool:
    unit = "mailrelay-queue-sync.service"
    # A oneshot run under way is "activating", not "active".
    state = lab("exec", node, "systemctl", "is-active", unit, check=False).stdout.strip()
    return state in ("active", "activating", "deactivating")


def delivered(tag: str) -> list[str]:
    return [m for m in lab("sink", "sink1", "list").stdout.split() if f"<{tag}-" in m]


def hops(tag: str) -> dict[str, list[str]]:
    """The Received: headers of each message of `tag` sink1 received, by Message-ID."""
    found: dict[str, list[str]] = {}
    for line in lab("sink", "sink1", "show").stdout.splitlines():
        record = json.loads(line)
        if f"<{tag}-" in record["message_id"]:
            found[record["message_id"]] = record["received"]
    return found


def flushed_and_delivered(node: str, tag: str) -> int:
    """Flush the node's queue (sink1 was down: its mail waits for a retry), then count the
    distinct messages of `tag` sink1 received."""
    lab("exec", node, "postqueue", "-f", check=False)
    return len(set(delivered(tag)))


def ok_runs_since(node: str, since: str) -> int:
    # `since` is what the node's own `date` printed, not outside input.
    query = "SELECT count(*) FROM sync_runs WHERE outcome = 'ok' AND started_at > '{}'"
    query = query.format(since)
    out = lab("exec", node, "runuser", "-u", "postgres", "--", "psql", "-d", "mailrelay",
              "-Atc", query, check=False)  # fmt: skip
    return int(out.stdout.strip() or 0)


def unprotected(node: str) -> int:
    out = lab("exec", node, "cat", COUNTERS, check=False).stdout
    try:
        return int(json.loads(out).get("unprotected_total", 0))
    except ValueError:
        return 0


def test_every_250_survives_the_loss_of_the_active_node_and_its_disk(up):
    """sink1 down, the active node's queue sync stopped (its replica on the peer never gets these
    messages), 30 messages through the VIP, each with its 250, then a power cut of the active
    node within half a second of the last 250, and its disk is lost: the peer delivers every one
    from its shadow copies (nothing else holds them). A freshly installed replacement then joins
    as BACKUP."""
    active = vip_owner()
    passive = other(active)
    wait_for(lambda: ready_backup(passive), 180, f"{passive} to be a ready BACKUP")
    tag = f"zero{int(time.time())}"
    hostname = lab("exec", active, "postconf", "-h", "myhostname").stdout.strip()
    lab("exec", active, "systemctl", "stop", "mailrelay-queue-sync.timer")
    wait_for(lambda: not sync_running(active), 60, f"the sync under way on {active} to end")
    lab("sink", "sink1", "stop")
    sent = subprocess.run(
        ["ip", "netns", "exec", "mrlab-client", "python3",
         str(SENDER), VIP, "30", tag],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # The power cut follows the sender's last 250 at once (the sender exits right after it).
    lab("crash", active, "--wipe")
    assert sent.returncode == 0, sent.stderr  # every message got its 250
    try:
        wait_for(
            lambda: "250 2.0.0 Ok: queued" in swaks("client", "pay@billing.example", timeout=3),
            60,
            f"a 250 through the VIP from {passive}",
        )
        lab("sink", "sink1", "start")

        wait_for(
            lambda: flushed_and_delivered(passive, tag) >= 30,
            120,
            "sink1 to receive the 30 messages",
        )
    finally:
        lab("sink", "sink1", "start")
        lab("boot", active, timeout=900)
    ids = delivered(tag)
    print(f"delivered by {passive} from shadows: {len(set(ids))} of 30")
    assert len(set(ids)) == 30, "a message that got a 250 was lost"
    print(f"duplicates: {len(ids) - len(set(ids))}")
    # Each still shows where it came in: the lost node's first hop, from its shadow copy.
    first_hop = f"by {hostname} (Postfix; as its shadow copy recorded it) id "
    traces = hops(tag)
    assert len(traces) == 30
    for message_id, received in traces.items():
        assert any(first_hop in h and "[198.18.0.30]" in h for h in received), message_id
    wait_for(lambda: ready_backup(active), 300, f"the replacement {active} to be a BACKUP")
    assert vip_owner() == passive, "the replacement took the VIP"
    # The replacement is a whole node again: mail through it is shadowed to the survivor.
    lab("exec", active, "systemctl", "is-active", "mailrelay-shadow-milter.service")
    # And the survivor's mail to the replacement, also after the survivor's next install (it
    # once got the lost node's certificate back from stale lab state, and copied nothing).
    for reinstall in (False, True):
        if reinstall:
            lab("install", passive, timeout=600)
        before = unprotected(passive)
        out = swaks("client", "pay@billing.example")
        assert "250 2.0.0 Ok: queued" in out, out
        assert unprotected(passive) == before, f"{passive} could not copy to the replacement"


def test_leaving_master_with_postfix_running_delivers_each_message_once(up):
    """keepalived stops on the active node (not a crash: its Postfix runs on, with a queue the
    peer is about to import). The node holds its queue at once, the peer delivers, and when the
    node is back its reconcile drops what the peer took over: each message reaches sink1 once."""
    active = vip_owner()
    passive = other(active)
    wait_for(lambda: ready_backup(passive), 180, f"{passive} to be a ready BACKUP")
    tag = f"leave{int(time.time())}"
    lab("sink", "sink1", "stop")
    try:
        sent = subprocess.run(
            ["ip", "netns", "exec", "mrlab-client", "python3", str(SENDER), VIP, "20", tag],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        time.sleep(12)  # two sync intervals: the replica on the peer holds them
        lab("exec", active, "systemctl", "stop", "keepalived")
        wait_for(lambda: vip_owner() == passive, 30, f"the VIP on {passive}")
        lab("sink", "sink1", "start")

        wait_for(
            lambda: flushed_and_delivered(passive, tag) >= 20,
            120,
            f"{passive} to deliver the 20 messages",
        )
    finally:
        lab("sink", "sink1", "start")
        lab("exec", active, "systemctl", "start", "keepalived")
    wait_for(lambda: ready_backup(active), 180, f"{active} back as BACKUP")
    lab("exec", active, "postqueue", "-f", check=False)
    time.sleep(10)  # time for anything the old active node still had to go out twice
    ids = delivered(tag)
    print(f"\nleaving MASTER: {len(set(ids))} of 20 delivered, {len(ids) - len(set(ids))} twice")
    assert len(ids) == len(set(ids)) == 20, "each message exactly once"


def test_with_the_peer_unreachable_prefer_counts_unprotected_mail_and_require_defers_it(up):
    """The peer's shadow receiver is down first. `prefer` (the default) still answers 250 and
    counts the message as unprotected; `require` answers 451 4.4.0 (the client keeps the
    message and retries) and counts nothing; with the receiver back, mail gets its 250 again."""
    active = vip_owner()
    passive = other(active)
    lab("exec", passive, "systemctl", "stop", "mailrelay-shadow-receiver.service")
    try:
        before = unprotected(active)
        out = swaks("client", "app@app.example")
        assert "250 2.0.0 Ok: queued" in out, out
        assert unprotected(active) == before + 1
        client, _ = gui_session(f"https://{A if active == 'a' else B}:8443")
        try:
            page = client.get("/").text
            assert f'<strong class="error">unprotected mail: {before + 1}</strong>' in page
            # A milter that is down counts nothing itself: the dashboard says so instead.
            lab("exec", active, "systemctl", "stop", "mailrelay-shadow-milter.service")
            try:
                assert 'id="shadow-milter-down"' in client.get("/").text
            finally:
                lab("exec", active, "systemctl", "start", "mailrelay-shadow-milter.service")
        finally:
            client.close()
        lab("install", active, "SHADOW_MODE=require", timeout=600)
        out = swaks("client", "app@app.example")
        assert "451 4.4.0" in out, out
        assert unprotected(active) == before + 1
        lab("exec", passive, "systemctl", "start", "mailrelay-shadow-receiver.service")
        wait_for(
            lambda: "250 2.0.0 Ok: queued" in swaks("client", "app@app.example"),
            30,
            "a 250 in require mode with the peer's receiver back",
        )
        assert unprotected(active) == before + 1
    finally:
        lab("exec", passive, "systemctl", "start", "mailrelay-shadow-receiver.service")
        lab("install", active, "SHADOW_MODE=prefer", timeout=600)


def test_queue_sync_goes_on_while_the_active_nodes_database_is_down(up):
    active = vip_owner()
    passive = other(active)
    outage = lab("exec", active, "date", "-u", "+%F %T+00").stdout.strip()
    lab("exec", active, "systemctl", "stop", POSTGRESQL_UNIT)
    lab("sink", "sink1", "stop")
    try:
        out = swaks("client", "dbdown@app.example")
        assert "250 2.0.0 Ok: queued" in out, out
        queue_id = re.search(r"queued as (\w+)", out).group(1)
        accepted = time.monotonic()
        took = wait_for(
            lambda: (
                queue_id
                in lab("exec", passive, "find", REPLICA, "-name", queue_id, check=False).stdout
            ),
            5 + 1 + 5,
            f"{queue_id} in {passive}'s replica",
        )
        print(f"\nactive node's PostgreSQL down: in {passive}'s replica after {took:.1f} s")
        assert time.monotonic() - accepted <= 5 + 1 + 1, "not within the sync interval + 1 s"
    finally:
        lab("exec", active, "systemctl", "start", POSTGRESQL_UNIT)
        lab("sink", "sink1", "start")
        lab("exec", active, "postqueue", "-f", check=False)
    # The runs made meanwhile reach sync_runs once the database is back.
    wait_for(lambda: ok_runs_since(active, outage) >= 2, 30, "the outage's runs recorded")
