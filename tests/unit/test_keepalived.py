"""keepalived.conf rendering, its validation, and the SMTP track script.

When keepalived is installed and we are root, the rendered file also passes `keepalived -t`, run
in a private network namespace with its own eth0 (a veth), so the host's interfaces do not matter.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.cluster import keepalived
from app.cluster.keepalived import KeepalivedConfigError, render_config, render_from_settings
from app.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
CHECK_SCRIPT = ROOT / "keepalived-conf" / "check_smtp.sh"

VALUES = {
    "node_id": "a",
    "node_ip": "198.18.6.11",
    "peer_node_ip": "198.18.6.12",
    "vip_address": "198.18.6.100",
    "vrrp_priority": 150,
    "vrrp_advert_int": 1,
    "vrrp_interface": "eth0",
}


def render(**changes: object) -> str:
    return render_config(**{**VALUES, **changes})  # type: ignore[arg-type]


def directives(config: str) -> list[str]:
    """The configuration without comments and blank lines, one stripped line each."""
    lines = (line.split("#", 1)[0].strip() for line in config.splitlines())
    return [line for line in lines if line]


def block(config: str, name: str) -> list[str]:
    """The lines inside the first `name {` ... `}` block (one level deep)."""
    lines = directives(config)
    start = lines.index(f"{name} {{")
    end = lines.index("}", start)
    return lines[start + 1 : end]


def test_it_renders_the_node_values():
    lines = directives(render())
    assert "router_id mailrelay-a" in lines
    assert "priority 150" in lines
    assert "advert_int 1" in lines
    assert "interface eth0" in lines
    assert "virtual_router_id 51" in lines
    assert "notify_fifo /run/mailrelay-vrrp/vrrp.fifo" in lines
    assert "script_user keepalived_script" in lines
    assert "enable_script_security" in lines
    assert block(render(), "virtual_ipaddress") == ["198.18.6.100/32 dev eth0"]


def test_it_leaves_no_placeholder():
    assert "{{" not in render()
    assert "}}" not in render()


def test_both_nodes_start_as_backup_and_never_preempt():
    for node_ip, peer, priority in (
        ("198.18.6.11", "198.18.6.12", 150),
        ("198.18.6.12", "198.18.6.11", 100),
    ):
        lines = directives(render(node_ip=node_ip, peer_node_ip=peer, vrrp_priority=priority))
        assert "state BACKUP" in lines
        assert "nopreempt" in lines
        assert not any(line.startswith("state MASTER") for line in lines)
        assert "preempt_delay" not in " ".join(lines)


def test_it_speaks_vrrp_version_3():
    assert "vrrp_version 3" in directives(render())


def test_adverts_go_by_unicast_to_the_peer_only():
    config = render()
    assert "unicast_src_ip 198.18.6.11" in directives(config)
    assert block(config, "unicast_peer") == ["198.18.6.12"]
    assert "check_unicast_src" in directives(config)


def test_the_track_script_checks_postfix_on_port_25_and_faults_on_failure():
    config = render()
    script = block(config, "vrrp_script check_smtp")
    assert f'script "{keepalived.CHECK_SCRIPT} 198.18.6.11 25 2"' in script
    # weight 0: a failing check means FAULT (the VIP is released); a weight would only lower the
    # priority, which nopreempt ignores.
    assert "weight 0" in script
    assert "fall 2" in script and "rise 2" in script
    assert block(config, "track_script") == ["check_smtp"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        ("1", "1"),
        (0.1, "0.1"),
        ("0.25", "0.25"),
        ("2.50", "2.5"),
        (10, "10"),
        ("40.95", "40.95"),
        ("0.01", "0.01"),
    ],
)
def test_the_advert_interval_is_written_in_seconds(value, text):
    assert f"advert_int {text}" in directives(render(vrrp_advert_int=value))


def test_the_vip_prefix_and_router_id_can_be_chosen():
    config = render(vip_prefix=24, virtual_router_id=7)
    assert block(config, "virtual_ipaddress") == ["198.18.6.100/24 dev eth0"]
    assert "virtual_router_id 7" in directives(config)


def test_ipv6_addresses_get_a_host_prefix():
    config = render(
        node_ip="2001:db8::11", peer_node_ip="2001:db8::12", vip_address="2001:db8::100"
    )
    assert block(config, "virtual_ipaddress") == ["2001:db8::100/128 dev eth0"]


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"node_ip": "198.18.6"}, "NODE_IP"),
        ({"node_ip": None}, "NODE_IP"),
        ({"node_ip": "127.0.0.1"}, "NODE_IP"),
        ({"peer_node_ip": None}, "PEER_NODE_IP"),
        ({"peer_node_ip": "peer.example"}, "PEER_NODE_IP"),
        ({"peer_node_ip": "198.18.6.11"}, "PEER_NODE_IP"),
        ({"peer_node_ip": "2001:db8::12"}, "PEER_NODE_IP"),
        ({"vip_address": None}, "VIP_ADDRESS"),
        ({"vip_address": "198.18.6.300"}, "VIP_ADDRESS"),
        ({"vip_address": "198.18.6.12"}, "VIP_ADDRESS"),
        ({"vip_address": "224.0.0.18"}, "VIP_ADDRESS"),
        ({"vrrp_interface": "eth0 dev lo"}, "VRRP_INTERFACE"),
        ({"vrrp_interface": "eth0}"}, "VRRP_INTERFACE"),
        ({"vrrp_interface": ""}, "VRRP_INTERFACE"),
        ({"vrrp_interface": "a-very-long-name0"}, "VRRP_INTERFACE"),
        ({"vrrp_interface": "eth0\nnopreempt"}, "VRRP_INTERFACE"),
        ({"vrrp_interface": ".."}, "VRRP_INTERFACE"),
        ({"vrrp_priority": 0}, "VRRP_PRIORITY"),
        ({"vrrp_priority": 255}, "VRRP_PRIORITY"),
        ({"vrrp_priority": "high"}, "VRRP_PRIORITY"),
        ({"vrrp_advert_int": 0}, "VRRP_ADVERT_INT"),
        ({"vrrp_advert_int": "0.005"}, "VRRP_ADVERT_INT"),
        ({"vrrp_advert_int": "0.015"}, "VRRP_ADVERT_INT"),
        ({"vrrp_advert_int": 41}, "VRRP_ADVERT_INT"),
        ({"vrrp_advert_int": 255}, "VRRP_ADVERT_INT"),
        ({"vrrp_advert_int": "nan"}, "VRRP_ADVERT_INT"),
        ({"vrrp_advert_int": "1s"}, "VRRP_ADVERT_INT"),
        ({"vrrp_advert_int": -1}, "VRRP_ADVERT_INT"),
        ({"vip_prefix": 33}, "VIP_PREFIX"),
        ({"virtual_router_id": 256}, "VRRP_ROUTER_ID"),
        ({"node_id": "a b"}, "NODE_ID"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(changes, setting):
    with pytest.raises(KeepalivedConfigError, match=rf"\b{setting}\b"):
        render(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"check_script": "check_smtp.sh"},
        {"check_script": "/opt/x y.sh"},
        {"notify_fifo": "/run/../etc/passwd"},
        {"script_user": "root root"},
    ],
)
def test_paths_and_the_script_user_cannot_inject_anything(changes):
    with pytest.raises(KeepalivedConfigError):
        render(**changes)


def test_a_placeholder_without_a_value_is_an_error(tmp_path):
    template = tmp_path / "t.conf"
    template.write_text("priority {{PRIORITY}}\nsomething {{UNKNOWN_THING}}\n")
    with pytest.raises(KeepalivedConfigError, match="UNKNOWN_THING"):
        render(template=template)


def test_it_renders_from_the_settings():
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://localhost/x",
            "NODE_ID": "b",
            "NODE_IP": "198.18.6.12",
            "PEER_NODE_IP": "198.18.6.11",
            "VIP_ADDRESS": "198.18.6.100",
            "VRRP_PRIORITY": "100",
        }
    )
    lines = directives(render_from_settings(settings))
    assert "priority 100" in lines
    assert "unicast_src_ip 198.18.6.12" in lines
    assert "advert_int 1" in lines  # the defaults
    assert "interface eth0" in lines


def test_interface_and_interval_come_from_the_environment():
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://localhost/x",
            "NODE_IP": "198.18.6.11",
            "PEER_NODE_IP": "198.18.6.12",
            "VIP_ADDRESS": "198.18.6.100",
            "VRRP_INTERFACE": "ens3",
            "VRRP_ADVERT_INT": "0.1",
        }
    )
    lines = directives(render_from_settings(settings))
    assert "interface ens3" in lines
    assert "advert_int 0.1" in lines


def test_it_renders_from_settings_that_have_interface_and_interval():
    settings = SimpleNamespace(**{**VALUES, "vrrp_interface": "ens3", "vrrp_advert_int": 0.1})
    lines = directives(render_from_settings(settings))
    assert "interface ens3" in lines
    assert "advert_int 0.1" in lines


def test_it_refuses_settings_without_a_peer():
    settings = SimpleNamespace(**{**VALUES, "peer_node_ip": None})
    with pytest.raises(KeepalivedConfigError, match="PEER_NODE_IP"):
        render_from_settings(settings)


# -- keepalived's own opinion -------------------------------------------------------------------


def _keepalived_missing() -> str | None:
    if shutil.which("keepalived") is None and not Path("/usr/sbin/keepalived").exists():
        return "keepalived is not installed (Debian package keepalived)"
    if os.geteuid() != 0:
        return "needs root (a network namespace with its own eth0)"
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    return None


def keepalived_test(config: str) -> tuple[bool, str]:
    """Run `keepalived -t` on the text in a private network namespace that has eth0.

    keepalived 2.2.7 (Debian 12) kills itself with SIGTERM at the end of a config test when a
    vrrp_script is configured, even for a good file (acassen/keepalived#2587, fixed in 2.2.8), so
    "killed by SIGTERM and nothing reported" counts as passed too. Every problem it finds is
    reported on stderr first.
    """
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        # enable_script_security refuses scripts under a path writable by others, and the script
        # user (nobody) must be able to reach it.
        os.chmod(base, 0o755)  # noqa: S103
        shutil.copy2(CHECK_SCRIPT, base / "check_smtp.sh")
        conf = base / "keepalived.conf"
        conf.write_text(config.replace(keepalived.CHECK_SCRIPT, str(base / "check_smtp.sh")))
        script = (
            "ip link add eth0 type veth peer name eth1 && ip link set eth0 up && "
            'ip addr add 198.18.6.11/24 dev eth0 && exec keepalived -t -f "$1"'
        )
        result = subprocess.run(
            ["unshare", "--net", "sh", "-c", script, "sh", str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    # unshare/sh report a signal death as 128 + 15; Python as -15.
    ok_status = result.returncode in (0, -15, 143)
    return ok_status and result.stderr.strip() == "", f"{result.returncode}: {result.stderr}"


@pytest.mark.skipif(_keepalived_missing() is not None, reason=str(_keepalived_missing()))
@pytest.mark.parametrize("advert", [1, "0.1", "40.95"])
def test_keepalived_accepts_the_rendered_file(advert):
    ok, report = keepalived_test(render(script_user="nobody", vrrp_advert_int=advert))
    assert ok, report


@pytest.mark.skipif(_keepalived_missing() is not None, reason=str(_keepalived_missing()))
def test_keepalived_config_test_does_catch_errors():
    """The acceptance rule above is not blind: a bad keyword fails it."""
    broken = render(script_user="nobody").replace("nopreempt", "nopreempt\n    no_such_keyword 1")
    ok, report = keepalived_test(broken)
    assert not ok
    assert "no_such_keyword" in report


# -- the track script ---------------------------------------------------------------------------


@pytest.fixture
def greeter() -> Iterator[tuple[int, dict[str, object]]]:
    """A TCP server on 127.0.0.1 that greets as told: {"greeting": bytes, "delay": seconds}."""
    behaviour: dict[str, object] = {"greeting": b"220 relay.test ESMTP\r\n", "delay": 0.0}
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                time.sleep(float(behaviour["delay"]))  # type: ignore[arg-type]
                try:
                    conn.sendall(behaviour["greeting"])  # type: ignore[arg-type]
                    conn.settimeout(1)
                    conn.recv(64)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], behaviour
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def check(port: int, limit: str = "2") -> tuple[int, float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(CHECK_SCRIPT), "127.0.0.1", str(port), limit],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode, time.monotonic() - started


def test_the_check_passes_on_a_220_greeting(greeter):
    port, _ = greeter
    assert check(port)[0] == 0


def test_the_check_passes_on_a_multiline_greeting(greeter):
    port, behaviour = greeter
    behaviour["greeting"] = b"220-relay.test ESMTP\r\n220 welcome\r\n"
    assert check(port)[0] == 0


def test_the_check_fails_on_a_refusal(greeter):
    port, behaviour = greeter
    behaviour["greeting"] = b"554 5.3.2 not now\r\n"
    assert check(port)[0] != 0


def test_the_check_fails_when_nothing_listens():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert check(port)[0] != 0


def test_the_check_gives_up_after_its_timeout(greeter):
    port, behaviour = greeter
    behaviour["delay"] = 3.0
    status, seconds = check(port, limit="1")
    assert status != 0
    assert seconds < 2.5


def test_the_check_refuses_odd_arguments():
    result = subprocess.run(
        [str(CHECK_SCRIPT), "127.0.0.1;true"], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert re.search("bad host", result.stderr)
