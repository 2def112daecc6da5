"""The two-node lab, everything real: the checks of the deployment issue (the lab is brought up
once for all lab modules, see conftest.py). Needs root (namespaces, nspawn, overlay mounts);
elsewhere the lab tests are skipped with the reason."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.lab.labtools import SENDER, VIP, A, B, lab, swaks, vip_owner, wait_for, web_manager_pid

pytestmark = pytest.mark.lab


def test_up_prints_what_to_try(up):
    assert f"https://{VIP}:8443/" in up
    assert "swaks --server" in up and "sink1" in up and "sink2" in up
    assert "both nodes run config version" in up


def test_no_node_has_an_account_with_a_known_password(up):
    """Each node's first admin got a random one-time password at install; the product's old
    default, admin / Admin123, is refused on both."""
    import httpx

    passwords = {node: lab("admin-password", node).stdout.strip() for node in ("a", "b")}
    assert passwords["a"] != passwords["b"] and all(len(p) >= 20 for p in passwords.values())
    assert "Admin123" not in up
    for node, address in (("a", A), ("b", B)):
        assert passwords[node] in up, f"the lab does not print node {node}'s password"
        mode = lab("exec", node, "stat", "-c", "%a %U", "/etc/mailrelay/initial-admin-password")
        assert mode.stdout.split() == ["600", "root"]
        with httpx.Client(base_url=f"https://{address}:8443", verify=False) as client:  # noqa: S501
            client.get("/login")
            response = client.post(
                "/login",
                data={"username": "admin", "password": "Admin123"},
                headers={"x-csrftoken": client.cookies["__Host-csrftoken"]},
                follow_redirects=False,
            )
            assert response.status_code != 303, f"node {node} let admin / Admin123 in"


def test_each_node_lists_the_product_timers_and_its_units_verify(up):
    for node in ("a", "b"):
        timers = lab("exec", node, "systemctl", "list-timers", "--all", "--no-pager").stdout
        for timer in (
            "mailrelay-queue-sync.timer",
            "mailrelay-retention.timer",
            "mailrelay-ingest-logs.timer",
        ):
            assert timer in timers, f"{node}: {timer} missing\n{timers}"
        # Only the slave pulls; the master has nothing to pull from.
        pulling = lab("exec", node, "systemctl", "is-active", "mailrelay-config-pull.timer",
                      check=False).stdout.strip()  # fmt: skip
        assert pulling == ("active" if node == "b" else "inactive"), (node, pulling)
        units = lab(
            "exec", node, "find", "/etc/systemd/system", "-maxdepth", "1", "-type", "f",
            "-name", "mailrelay-*",
        ).stdout.split()  # fmt: skip
        verify = lab("exec", node, "systemd-analyze", "verify", "--man=no", *units, check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_long_running_services_run_with_the_final_settings(up):
    """scripts/lab installs node a a second time, with the peer's API token: the services that
    read their settings once, at start, must have been restarted with it (without it, a's VRRP
    reader cannot ask the peer anything when a leaves MASTER)."""
    for node, name in (("a", "PEER_API_URL"), ("b", "MASTER_API_URL")):
        vrrp = lab("exec", node, "systemctl", "show", "-P", "MainPID",
                   "mailrelay-vrrp-events.service").stdout.strip()  # fmt: skip
        for what, pid in (("vrrp events", vrrp), ("web manager", web_manager_pid(node))):
            environ = lab("exec", node, "cat", f"/proc/{pid}/environ").stdout.split("\0")
            assert any(v.startswith(f"{name}=https://") for v in environ), f"{node} {what}"


def mail_log_status(node: str, queue_id: str) -> str:
    assert re.fullmatch(r"[0-9A-Za-z]+", queue_id), queue_id
    query = "SELECT string_agg(status, ',') FROM mail_logs WHERE queue_id = '{}'"
    query = query.format(queue_id)
    out = lab("exec", node, "runuser", "-u", "postgres", "--", "psql", "-d", "mailrelay",
              "-Atc", query, check=False)  # fmt: skip
    return out.stdout.strip()


def test_the_vip_relays_by_route_and_refuses_the_rest(up):
    wait_for(lambda: vip_owner() in ("a", "b"), 30, "a VIP owner")
    assert vip_owner() == "a"
    before1 = int(lab("sink", "sink1", "count").stdout)
    before2 = int(lab("sink", "sink2", "count").stdout)
    out = swaks("client", "app@app.example")
    assert "250 2.0.0 Ok: queued" in out
    queue_id = re.search(r"queued as (\w+)", out).group(1)
    assert "250 2.0.0 Ok: queued" in swaks("client", "pay@billing.example")
    wait_for(lambda: int(lab("sink", "sink1", "count").stdout) == before1 + 1, 20, "sink1")
    wait_for(lambda: int(lab("sink", "sink2", "count").stdout) == before2 + 1, 20, "sink2")
    # Message tracking reads what ingestion (user mailrelay, group adm) read from Postfix's own
    # log: on Debian 13 postlogd made that file 0600 root:root, and tracking stayed empty.
    wait_for(lambda: mail_log_status("a", queue_id) == "sent", 20, f"{queue_id} in a's mail log")
    assert "553 5.7.1" in swaks("client", "x@blocked.example")
    assert "554 5.7.1" in swaks("outside", "app@app.example")


def test_the_passive_node_holds_a_copy_of_the_queue_soon(up):
    assert vip_owner() == "a"
    lab("sink", "sink1", "stop")
    try:
        out = swaks("client", "queued@app.example")
        queue_id = re.search(r"queued as (\w+)", out).group(1)
        took = wait_for(
            lambda: (
                queue_id
                in lab(
                    "exec",
                    "b",
                    "find",
                    "/var/spool/mailrelay-replica",
                    "-name",
                    queue_id,
                    check=False,
                ).stdout
            ),
            10,
            f"{queue_id} in b's replica",
        )
        print(f"\nqueued on a -> in b's replica after {took:.1f} s")
        # Only into the replica: b's live queue never sees a's messages.
        live = lab("exec", "b", "find", "/var/spool/postfix", "-name", queue_id, check=False)
        assert queue_id not in live.stdout
    finally:
        lab("sink", "sink1", "start")
        lab("exec", "a", "postqueue", "-f", check=False)


def test_failover_takes_over_the_queue_and_the_vip(up):
    """The seed's drill: sink1 unreachable, 200 messages through the VIP, B's replica holds
    them within 10 s, crash A, B takes the VIP and imports, sink1 returns: all 200 arrive; and a
    late message that only a's queue and b's shadow store hold arrives too, once."""
    assert vip_owner() == "a"
    tag = f"drill{int(time.time())}"
    lab("sink", "sink1", "stop")
    sent = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            "mrlab-client",
            "python3",
            str(SENDER),
            VIP,
            "200",
            tag,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr

    def replica_count() -> int:
        out = lab(
            "exec",
            "b",
            "sh",
            "-c",
            "find /var/spool/mailrelay-replica/incoming "
            "/var/spool/mailrelay-replica/active /var/spool/mailrelay-replica/deferred "
            "-type f | wc -l",
            check=False,
        ).stdout
        return int(out.strip() or 0)

    took = wait_for(lambda: replica_count() >= 200, 10 + 5, "200 messages in b's replica")
    print(f"\n200 queued on a -> in b's replica after {took:.1f} s (after sending)")
    # One more message that a accepts after its last sync: a's disk has it, and b only as the
    # shadow copy made before its 250.
    lab("exec", "a", "systemctl", "stop", "mailrelay-queue-sync.timer")
    late = swaks(
        "client", "late@app.example", VIP, "--header", f"Message-Id: <{tag}-late@drill.test>"
    )
    assert "250 2.0.0 Ok: queued" in late
    crashed = time.monotonic()
    lab("crash", "a")
    try:
        wait_for(
            lambda: "250 2.0.0 Ok: queued" in swaks("client", "app@app.example", timeout=3),
            60,
            "a 250 through the VIP",
        )
        print(f"crash of a -> first 250 through the VIP after {time.monotonic() - crashed:.1f} s")
        assert vip_owner() == "b"
        lab("sink", "sink1", "start")
        # The imported messages were tried while sink1 was still down; as with any deferred mail,
        # the operator flushes once the target is back (else Postfix retries after its backoff).
        wait_for(
            lambda: lab("exec", "b", "postqueue", "-f", check=False).returncode == 0,
            10,
            "a flush on b",
        )

        def drill_ids() -> list[str]:
            return [m for m in lab("sink", "sink1", "list").stdout.split() if f"<{tag}-" in m]

        wait_for(lambda: len(set(drill_ids())) >= 201, 120, "sink1 to receive the 201 messages")
        ids = drill_ids()
        print(
            f"sink1 received {len(set(ids))} unique drill messages, {len(ids) - len(set(ids))} "
            "duplicates"
        )
        assert len(set(ids)) == 201, "the late message came from b's shadow store too"
    finally:
        lab("boot", "a", timeout=300)
    time.sleep(8)  # several advert intervals: a would have taken the VIP back by now
    assert vip_owner() == "b", "nopreempt: a returning node must stay BACKUP"
    # Failback: a asked b what b took over (the late message's original queue ID too: b injected
    # it from its shadow), dropped exactly that, and delivers nothing twice.
    lab("exec", "a", "postqueue", "-f", check=False)

    def late_count() -> int:
        return sum(
            1
            for m in lab("sink", "sink1", "list").stdout.split()
            if m == f"<{tag}-late@drill.test>"
        )

    assert late_count() >= 1
    time.sleep(10)  # time for anything a still had to go out twice
    ids = [m for m in lab("sink", "sink1", "list").stdout.split() if f"<{tag}-" in m]
    print(
        f"after failback: {len(set(ids))} unique drill messages, {len(ids) - len(set(ids))} "
        "duplicates"
    )
    assert late_count() == 1
    assert len(ids) == len(set(ids)) == 201, "nothing lost, nothing delivered twice"


def test_a_clean_keepalived_stop_moves_the_vip(up):
    owner = vip_owner()
    other = "a" if owner == "b" else "b"
    # The peer must be ready to take over: keepalived running there, in BACKUP.
    wait_for(
        lambda: (
            '"BACKUP"'
            in lab("exec", other, "cat", "/run/mailrelay-vrrp/vrrp.state", check=False).stdout
        ),
        120,
        f"{other} to be a ready BACKUP",
    )
    started = time.monotonic()
    lab("exec", owner, "systemctl", "stop", "keepalived")
    try:
        wait_for(lambda: vip_owner() == other, 20, f"the VIP to move to {other}")
        print(
            f"\nclean keepalived stop on {owner}: VIP on {other} after "
            f"{time.monotonic() - started:.1f} s"
        )
        assert "250 2.0.0 Ok: queued" in swaks("client", "app@app.example")
    finally:
        lab("exec", owner, "systemctl", "start", "keepalived")
