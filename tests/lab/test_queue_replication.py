"""Queue replication in the lab, everything real: syncs under continuous SMTP load in `freeze`
and `stop` mode, a peer that cannot be reached during a sync, a sync that dies mid-copy, and a
partition with mail on both sides. Runs after test_lab.py on the same lab (see conftest.py);
each test works with whichever node holds the VIP when it starts."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.lab.labtools import (
    POSTFIX_UNIT,
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

ROOT = Path(__file__).resolve().parents[2]
NODE_IP = {"a": A, "b": B}
REPLICA = "/var/spool/mailrelay-replica"
AUTHORIZED_KEYS = "/var/lib/mailrelay-sync/.ssh/authorized_keys"
MAILRELAY_ENV = "/etc/mailrelay/mailrelay.env"
AGENT_ENV = "/etc/mailrelay/agent.env"
RRSYNC = 'command="/usr/bin/rrsync'
SLOW_RRSYNC = 'command="sleep 4; /usr/bin/rrsync'


def other(node: str) -> str:
    return "b" if node == "a" else "a"


def sql(node: str, query: str) -> list[str]:
    out = lab(
        "exec", node, "runuser", "-u", "postgres", "--", "psql", "-d", "mailrelay", "-Atc", query
    ).stdout
    return [line for line in out.splitlines() if line]


def node_now(node: str) -> str:
    return sql(node, "SELECT now()")[0]


def sync_runs(node: str, since: str) -> list[dict[str, str]]:
    """The node's sync runs since `since` (a time the node's own now() returned)."""
    query = (
        "SELECT json_build_object('outcome', outcome, 'mode', freeze_mode, 'frozen', "
        "freeze_seconds, 'detail', detail) FROM sync_runs WHERE started_at > '{}' ORDER BY id"
    )
    return [json.loads(row) for row in sql(node, query.format(since))]


def shadow_segments(node: str) -> list[str]:
    listing = lab("exec", node, "ls", "/var/spool/mailrelay-shadow").stdout.split()
    return [name for name in listing if name.startswith("segment-")]


def set_env(node: str, name: str, value: str | None, env: str = MAILRELAY_ENV) -> None:
    """Set (or with None, remove) a variable in one of the node's environment files. The sync
    timer starts a fresh job every 5 s, which reads mailrelay.env again; the agent reads
    agent.env when it starts."""
    line = f" && echo {name}={value} >> {env}" if value is not None else ""
    lab("exec", node, "sh", "-c", f"sed -i '/^{name}=/d' {env}{line}")


def load(seconds: float, tag: str, concurrency: int = 4, pause: float = 0.05) -> dict:
    script = ROOT / "scripts" / "lib" / "smtpload.py"
    result = subprocess.run(
        ["ip", "netns", "exec", "mrlab-client", "python3", str(script), VIP, str(seconds),
         str(concurrency), "app@app.example", tag, str(pause)],
        capture_output=True, text=True, timeout=seconds + 120, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


def queue_files(node: str, root: str) -> set[str]:
    out = lab(
        "exec", node, "sh", "-c",
        f"cd {root} && find incoming active deferred hold -type f 2>/dev/null | sort",
        check=False,
    ).stdout  # fmt: skip
    return set(out.split())


def queue_ids(files: set[str]) -> set[str]:
    return {Path(name).name for name in files}


def send(server: str, count: int, tag: str) -> None:
    sent = subprocess.run(
        ["ip", "netns", "exec", "mrlab-client", "python3",
         str(SENDER), server, str(count), tag],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr


def delivered(tag: str) -> list[str]:
    return [m for m in lab("sink", "sink1", "list").stdout.split() if f"<{tag}-" in m]


def node_state(node: str) -> str:
    return lab("exec", node, "cat", "/run/mailrelay-vrrp/vrrp.state", check=False).stdout


def deliver_all(tag: str, count: int, timeout: float) -> list[str]:
    """Flush both nodes until sink1 has `count` distinct messages of `tag`, give anything that
    would go out twice time to do so, and return every delivery of them."""

    def arrived() -> int:
        for node in ("a", "b"):
            lab("exec", node, "postqueue", "-f", check=False)
        return len(set(delivered(tag)))

    wait_for(lambda: arrived() == count, timeout, f"the {count} messages at sink1")
    time.sleep(10)
    return delivered(tag)


def postfix_frozen(node: str) -> bool:
    cgroup = lab(
        "exec", node, "systemctl", "show", "-P", "ControlGroup", POSTFIX_UNIT
    ).stdout.strip()
    # The nodes have a hybrid layout (cgroup v2 under unified/), like the agent looks for.
    events = lab(
        "exec", node, "sh", "-c",
        f"cat /sys/fs/cgroup/unified{cgroup}/cgroup.events 2>/dev/null "
        f"|| cat /sys/fs/cgroup{cgroup}/cgroup.events",
    ).stdout  # fmt: skip
    return "frozen 1" in events


def relay_settled(since: dict[str, str]) -> bool:
    """The VIP's owner has finished a default-mode sync since `since` and greets clients."""
    owner = vip_owner()
    if owner not in NODE_IP:
        return False
    runs = sync_runs(owner, since[owner])
    return any(run["mode"] == "freeze" and run["outcome"] == "ok" for run in runs) and (
        "220 " in swaks("client", "app@app.example", VIP, "--quit-after", "banner")
    )


def test_syncs_under_load_refuse_nothing_in_freeze_mode_and_stop_mode_shows_its_cost(up):
    """30 s of SMTP sessions through the VIP in each mode. Both nodes get the mode: in stop
    mode Postfix's check may fail long enough for keepalived to move the VIP, and then the
    other node syncs (and stops its Postfix) in turn."""
    results = {}
    try:
        for mode in ("freeze", "stop"):
            for node in ("a", "b"):
                set_env(node, "SYNC_FREEZE", mode)
            time.sleep(6)  # a run that started with the old mode has finished
            since = {node: node_now(node) for node in ("a", "b")}
            owner = vip_owner()
            results[mode] = load(30, f"load-{mode}-{int(time.time())}")
            runs = [run for node in ("a", "b") for run in sync_runs(node, since[node])]
            ok = [run for run in runs if run["outcome"] == "ok" and run["mode"] == mode]
            held = sorted(run["frozen"] for run in ok)
            result = results[mode]
            print(
                f"\n{mode}: {result['sessions']} SMTP sessions in 30 s, errors "
                f"{result['errors'] or 'none'}, greeting ms {result['greeting_ms']}; "
                f"{len(ok)} syncs ok of {len(runs)}, Postfix {mode} "
                f"{held[0] * 1000:.0f}-{held[-1] * 1000:.0f} ms; VIP {owner} -> {vip_owner()}"
                if held
                else f"\n{mode}: no successful sync: {runs}"
            )
            assert len(ok) >= 2, f"{mode}: syncs every 5 s expected during the load: {runs}"
            if mode == "freeze":
                # The load's shadows on the passive node go once a sync's mark (shipped in
                # the replica) covers them: app/replication/sync_mark.py.
                passive = "b" if vip_owner() == "a" else "a"
                wait_for(lambda node=passive: not shadow_segments(node), 30, f"{passive} pruning")
    finally:
        for node in ("a", "b"):
            set_env(node, "SYNC_FREEZE", None)
        # A stop-mode sync that began before the reset may still hold Postfix down, or the VIP
        # may be moving: the next test sends through the VIP at once.
        since = {node: node_now(node) for node in ("a", "b")}
        wait_for(lambda: relay_settled(since), 90, "a freeze-mode sync and a greeting at the VIP")
    assert results["freeze"]["errors"] == {}, "a frozen Postfix must refuse no client"
    assert results["freeze"]["accepted"] > 0
    # The seed's stop/start closes the listener: senders see refused connections.
    assert sum(results["stop"]["errors"].values()) > 0, results["stop"]


def test_a_sync_to_an_unreachable_peer_fails_cleanly_and_deletes_nothing(up):
    node = vip_owner()
    peer = other(node)
    tag = f"unreach{int(time.time())}"
    lab("sink", "sink1", "stop")
    try:
        send(VIP, 20, tag)
        live = queue_files(node, "/var/spool/postfix")
        wait_for(lambda: len(queue_files(peer, REPLICA)) >= len(live), 15, "the replica")
        replica = queue_files(peer, REPLICA)
        lab("exec", peer, "systemctl", "stop", "ssh.socket", "ssh.service", check=False)
        since = node_now(node)
        wait_for(
            lambda: any(run["outcome"] == "failed" for run in sync_runs(node, since)),
            20,
            "a failed sync run",
        )
        failed = [run for run in sync_runs(node, since) if run["outcome"] == "failed"]
        print(f"\nsync with the peer's ssh down: {failed[0]['detail'][:200]}")
        assert "rsync" in failed[0]["detail"]
        # The dashboard's cluster panel shows the failed run with its reason.
        client, _token = gui_session(f"https://{NODE_IP[node]}:8443")
        panel = client.get("/cluster", headers={"HX-Request": "true"}).text
        assert '<span class="error">failed</span>' in panel and "rsync" in panel, panel
        # Nothing deleted on either side, and Postfix is not left frozen.
        assert queue_files(peer, REPLICA) == replica
        # By queue ID: Postfix moves a file between active/ and deferred/ as it retries.
        assert queue_ids(live) <= queue_ids(queue_files(node, "/var/spool/postfix"))
        assert not postfix_frozen(node)
        assert "250 2.0.0 Ok: queued" in swaks("client", "app@app.example")
    finally:
        lab("exec", peer, "systemctl", "start", "ssh.socket", "ssh.service", check=False)
        lab("sink", "sink1", "start")
    since = node_now(node)
    wait_for(
        lambda: any(run["outcome"] == "ok" for run in sync_runs(node, since)),
        20,
        "a successful sync once the peer is back",
    )
    lab("exec", node, "postqueue", "-f")
    wait_for(lambda: len(set(delivered(tag))) == 20, 60, "the 20 messages at sink1")


@pytest.mark.parametrize("victim", ["mailrelay-queue-sync.service", "mailrelay-agent.service"])
def test_postfix_is_thawed_within_seconds_when_the_sync_dies_mid_copy(up, victim):
    """The job (the client that asked for the sync) or the agent (which froze Postfix) is
    killed with SIGKILL while Postfix is frozen. The frozen window normally holds only a local
    copy (milliseconds); to catch it, this test turns the local snapshot off (so the frozen
    pass copies to the peer) and makes the peer's forced ssh command sleep 4 s first."""
    node = vip_owner()
    peer = other(node)
    keys = lab("exec", peer, "cat", AUTHORIZED_KEYS).stdout
    lab("exec", node, "systemctl", "stop", "mailrelay-queue-sync.timer")
    set_env(node, "SYNC_SNAPSHOT_DIR", "", AGENT_ENV)
    lab("exec", node, "systemctl", "restart", "mailrelay-agent.service")
    lab(
        "exec", peer, "sed", "-i", f"s|{RRSYNC}|{SLOW_RRSYNC}|",
        AUTHORIZED_KEYS,
    )  # fmt: skip
    try:
        lab("exec", node, "systemctl", "start", "--no-block", "mailrelay-queue-sync.service")
        wait_for(lambda: postfix_frozen(node), 30, "Postfix frozen for the final pass")
        killed = time.monotonic()
        lab("exec", node, "systemctl", "kill", "--signal=KILL", victim)
        thawed = wait_for(lambda: not postfix_frozen(node), 30, "Postfix thawed")
        print(f"\n{victim} killed mid-copy: Postfix thawed after {time.monotonic() - killed:.1f} s")
        assert thawed < 10
        assert "250 2.0.0 Ok: queued" in swaks("client", "app@app.example")
    finally:
        lab(
            "exec", peer, "sed", "-i", f"s|{SLOW_RRSYNC}|{RRSYNC}|",
            AUTHORIZED_KEYS,
        )  # fmt: skip
        set_env(node, "SYNC_SNAPSHOT_DIR", None, AGENT_ENV)
        lab("exec", node, "systemctl", "restart", "mailrelay-agent.service")
        lab("exec", node, "systemctl", "start", "mailrelay-queue-sync.timer")
    assert lab("exec", peer, "cat", AUTHORIZED_KEYS).stdout == keys
    # Postfix frozen for seconds fails keepalived's SMTP check twice in a row at times, and then
    # the VIP rightly moves to the peer: the sync that must work again is the VIP owner's.
    since = {name: node_now(name) for name in (node, peer)}

    def owner_synced() -> bool:
        owner = vip_owner()
        return owner in since and any(
            run["outcome"] == "ok" for run in sync_runs(owner, since[owner])
        )

    wait_for(owner_synced, 30, "a successful sync by the VIP owner afterwards")


def test_a_partition_with_mail_on_both_sides_loses_nothing(up):
    tag = f"split{int(time.time())}"
    lab("sink", "sink1", "stop")
    lab("partition")
    try:
        wait_for(
            lambda: all(
                VIP in lab("exec", node, "ip", "-o", "addr", check=False).stdout
                for node in ("a", "b")
            ),
            30,
            "both nodes to hold the VIP (split brain)",
        )
        # Each side accepts mail on its own address; it stays queued while sink1 is down.
        send(A, 10, f"{tag}-a")
        send(B, 10, f"{tag}-b")
    finally:
        lab("heal")
    wait_for(
        lambda: (
            sum(
                VIP in lab("exec", node, "ip", "-o", "addr", check=False).stdout
                for node in ("a", "b")
            )
            == 1
        ),
        60,
        "one VIP owner after the heal",
    )
    lab("sink", "sink1", "start")
    ids = deliver_all(tag, 20, 180)
    print(
        f"\npartition: {len(set(ids))} of 20 delivered, {len(ids) - len(set(ids))} duplicates; "
        f"VIP on {vip_owner()} after the heal"
    )
    assert len(set(ids)) == 20


def test_a_planned_switchover_moves_the_vip_and_each_message_exactly_once(up):
    node = vip_owner()
    peer = other(node)
    wait_for(lambda: "BACKUP" in node_state(peer), 120, f"{peer} to be a ready BACKUP")
    tag = f"switch{int(time.time())}"
    lab("sink", "sink1", "stop")
    try:
        send(VIP, 30, tag)
        switched = lab(
            "exec", node, "runuser", "-u", "mailrelay", "--", "bash", "-c",
            "set -a; . /etc/mailrelay/mailrelay.env; set +a; "
            "exec /opt/mailrelay/venv/bin/mailrelay switchover",
            check=False, timeout=300,
        )  # fmt: skip
        print(f"\nswitchover {node} -> {peer}:\n{switched.stdout}{switched.stderr}")
        assert switched.returncode == 0
        for step in ("vip", "peer", "final_sync", "handover", "peer_vip", "reconcile", "smtp"):
            assert re.search(rf"^{step}\s+ok\b", switched.stdout, re.MULTILINE), step
        assert vip_owner() == peer
    finally:
        lab("sink", "sink1", "start")
    ids = deliver_all(tag, 30, 120)
    print(f"after the switchover: {len(set(ids))} of 30 delivered, {len(ids) - 30} duplicates")
    assert len(ids) == 30, "each message exactly once"
