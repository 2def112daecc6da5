"""Debian 13 nodes (`LAB_DEBIAN=13`): the web manager runs as the rootless Podman quadlet of
the mailrelay user, answers through the VIP and on each node, reaches the agent only through
its socket, comes back by itself when its container is killed, and fails over with the node."""

from __future__ import annotations

import subprocess

import pytest

from tests.lab.labtools import (
    AS_MAILRELAY,
    DEBIAN,
    ROOT,
    VIP,
    A,
    B,
    lab,
    swaks,
    switch_back_to,
    vip_owner,
    wait_for,
    web_manager,
    web_manager_pid,
)

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(DEBIAN != "13", reason="the lab runs Debian 12 nodes (LAB_DEBIAN=13)"),
]

NODES = {"a": A, "b": B}


def podman(node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return lab("exec", node, *AS_MAILRELAY, "podman", *args, check=check)


def healthz(address: str) -> bool:
    """The GUI's health answer over HTTPS, asked from the lab's client, as a browser would."""
    curl = ["curl", "-ksS", "--max-time", "3", f"https://{address}:8443/healthz"]
    result = lab("exec", "client", *curl, check=False)
    return result.returncode == 0 and '"ok"' in result.stdout


def test_the_web_manager_is_mailrelays_quadlet_and_no_system_unit(up):
    for node in NODES:
        assert web_manager(node, "is-active").stdout.strip() == "active", node
        names = podman(node, "ps", "--format", "{{.Names}}").stdout.split()
        assert "mailrelay-web" in names, (node, names)
        system = lab("exec", node, "systemctl", "is-active", "mailrelay-web.service", check=False)
        assert system.stdout.strip() != "active", node
        owner = lab("exec", node, "ps", "-o", "user=", "-p", web_manager_pid(node)).stdout
        assert owner.strip() == "mailrelay", (node, owner)


def test_the_gui_answers_through_the_vip_and_on_each_node(up):
    wait_for(lambda: healthz(VIP), 60, "the GUI through the VIP")
    for node, address in NODES.items():
        assert healthz(address), node


def test_the_container_sees_the_agent_socket_and_not_the_mail_system(up):
    for node in NODES:
        mounts = podman(
            node, "inspect", "-f", "{{range .Mounts}}{{.Destination}} {{end}}", "mailrelay-web"
        ).stdout.split()
        assert "/run/mailrelay" in mounts, mounts
        assert not any(m.startswith(("/etc/postfix", "/var/spool/postfix")) for m in mounts)
        probe = "test -S /run/mailrelay/agent.sock && ! test -e /etc/postfix/main.cf"
        assert podman(node, "exec", "mailrelay-web", "sh", "-c", probe, check=False).returncode == 0
        status = lab("exec", node, "cat", f"/proc/{web_manager_pid(node)}/status").stdout
        assert "CapEff:\t0000000000000000" in status, (node, status)


def test_the_web_manager_comes_back_by_itself_after_its_container_is_killed(up):
    node = "b"
    before = web_manager_pid(node)
    podman(node, "kill", "mailrelay-web")
    wait_for(
        lambda: web_manager_pid(node) not in ("", "0", before) and healthz(NODES[node]),
        120,
        f"{node}'s web manager back from its quadlet",
    )


def test_install_node_check_reports_nothing_to_change(up):
    """The same install-node and settings file the lab installed the node with."""
    for node in NODES:
        check = lab(
            "exec", node, "env", "UV=/usr/local/bin/uv", "UV_OFFLINE=1",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin", str(ROOT / "scripts" / "install-node"),
            "/etc/mailrelay-lab.env", "--check", timeout=300,
        )  # fmt: skip
        assert "nothing to change" in check.stdout, (node, check.stdout, check.stderr)


def test_a_crash_of_the_active_node_moves_smtp_and_the_gui_to_its_peer(up):
    active = vip_owner()
    peer = "b" if active == "a" else "a"
    lab("crash", active)
    try:
        wait_for(lambda: vip_owner() == peer, 60, f"{peer} to take the VIP")
        wait_for(lambda: healthz(VIP), 60, "the GUI through the VIP on the peer")
        out = swaks("client", "app@app.example")
        assert "250 2.0.0 Ok: queued" in out, out
    finally:
        lab("boot", active, timeout=600)
    wait_for(lambda: healthz(NODES[active]), 300, f"{active}'s GUI back after its boot")
    switch_back_to(active, peer)


def test_the_app_cannot_change_what_mailrelays_systemd_and_podman_read(up):
    """The state directory the container writes is also mailrelay's home: its quadlets, user
    units and podman storage are read-only in the container, the app's own files are not."""
    for node in NODES:
        for path in (
            ".config/containers/systemd/mailrelay-web.container",
            ".config/systemd/user/evil.service",
            ".local/share/systemd/user/evil.service",
            ".local/share/containers/evil",
            ".cache/evil",
        ):
            target = f"/var/lib/mailrelay/{path}"
            probe = f"mkdir -p {target.rsplit('/', 1)[0]} && touch {target}"
            tried = podman(node, "exec", "mailrelay-web", "sh", "-c", probe, check=False)
            assert tried.returncode != 0, (node, path)
            assert "Read-only file system" in tried.stderr, (node, path, tried.stderr)
        probe = "touch /var/lib/mailrelay/tls/.probe && rm /var/lib/mailrelay/tls/.probe"
        assert podman(node, "exec", "mailrelay-web", "sh", "-c", probe, check=False).returncode == 0
