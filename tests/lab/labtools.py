"""What the lab tests share: running `scripts/lab`, swaks from a lab host, the VIP owner,
waiting for a condition, a GUI session on a node."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAB = str(ROOT / "scripts" / "lab")
# Sends COUNT numbered messages over one session (the drills and the bench use it).
SENDER = ROOT / "scripts" / "lib" / "sender.py"
VIP = "198.18.0.100"
A, B = "198.18.0.11", "198.18.0.12"
LAB_ADMIN_PASSWORD = "lab-admin-password-1"  # what the lab tests change the one-time one to

# The nodes' Debian release (LAB_DEBIAN, as the `up` fixture brings the lab up) and the names
# that differ between the two.
DEBIAN = os.environ.get("LAB_DEBIAN", "12")
POSTGRESQL_UNIT = "postgresql@15-main" if DEBIAN == "12" else "postgresql@17-main"
POSTFIX_UNIT = "postfix@-.service" if DEBIAN == "12" else "postfix.service"
# On Debian 13 the web manager is the rootless quadlet of the mailrelay user: the lab's own
# command prefix for mailrelay's podman and systemctl --user (scripts/lab_debian13.py).
_spec = importlib.util.spec_from_file_location("lab_debian13", ROOT / "scripts" / "lab_debian13.py")
assert _spec is not None and _spec.loader is not None
_lab_debian13 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_lab_debian13)
AS_MAILRELAY: list[str] = _lab_debian13.AS_MAILRELAY


def lab(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [LAB, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"scripts/lab {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result


def web_manager(node: str, *systemctl: str, check: bool = True) -> subprocess.CompletedProcess:
    """`systemctl ARGS` for the node's web manager: the system unit on Debian 12, mailrelay's
    user unit (the quadlet) on Debian 13."""
    if DEBIAN == "12":
        return lab("exec", node, "systemctl", *systemctl, "mailrelay-web.service", check=check)
    return lab(
        "exec", node, *AS_MAILRELAY, "systemctl", "--user", *systemctl, "mailrelay-web.service",
        check=check,
    )  # fmt: skip


def web_manager_pid(node: str) -> str:
    """The PID (in the node) of the web manager's process: the unit's main process, or the
    container's first process; "" while there is none (a container being restarted)."""
    if DEBIAN == "12":
        return web_manager(node, "show", "-P", "MainPID").stdout.strip()
    inspect = ["podman", "inspect", "-f", "{{.State.Pid}}", "mailrelay-web"]
    result = lab("exec", node, *AS_MAILRELAY, *inspect, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


MAILRELAY = "set -a; . /etc/mailrelay/mailrelay.env; set +a; exec /opt/mailrelay/venv/bin/mailrelay"


def node_state(node: str) -> str:
    return lab("exec", node, "cat", "/run/mailrelay-vrrp/vrrp.state", check=False).stdout


def switch_back_to(node: str, peer: str) -> None:
    """A planned switchover from `peer` to `node` once `node` is a ready BACKUP again: lab
    modules start from a as the active node."""
    wait_for(lambda: '"BACKUP"' in node_state(node), 180, f"{node} to be a ready BACKUP")
    switched = lab(
        "exec", peer, "runuser", "-u", "mailrelay", "--", "bash", "-c", f"{MAILRELAY} switchover",
        check=False, timeout=300,
    )  # fmt: skip
    assert switched.returncode == 0, switched.stdout + switched.stderr
    assert vip_owner() == node


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, overlay mounts, systemd-nspawn)"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is missing (Debian package systemd-container)"
    return None


def swaks(host: str, sender: str, server: str = VIP, *extra: str, timeout: int = 10) -> str:
    # Straight into the client's namespace (what `scripts/lab exec` does, minus its start-up).
    cmd = [
        "ip",
        "netns",
        "exec",
        f"mrlab-{host}",
        "swaks",
        "--server",
        server,
        "--from",
        sender,
        "--to",
        "you@dest.example",
        "--timeout",
        str(timeout),
        *extra,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 20, check=False)
    return result.stdout + result.stderr


def vip_owner() -> str:
    match = re.search(r"VIP \S+: (\w+)", lab("status").stdout)
    return match.group(1) if match else "?"


def wait_for(condition, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def gui_session(base: str):
    """Log in to a node's GUI as admin over real HTTPS (the lab's self-signed certificate),
    doing the forced change of the install's one-time password when it is due."""
    import httpx

    node = "a" if A in base else "b"
    one_time = lab("admin-password", node).stdout.strip()
    client = httpx.Client(base_url=base, verify=False, timeout=20)  # noqa: S501 - lab cert
    client.get("/login")
    token = client.cookies["__Host-csrftoken"]
    for password in (LAB_ADMIN_PASSWORD, one_time):
        response = client.post(
            "/login",
            data={"username": "admin", "password": password},
            headers={"x-csrftoken": token},
            follow_redirects=False,
        )
        if response.status_code == 303:
            break
    if response.headers["location"] == "/password":
        client.post(
            "/password",
            headers={"x-csrftoken": token},
            data={
                "current_password": one_time,
                "new_password": LAB_ADMIN_PASSWORD,
                "new_password_again": LAB_ADMIN_PASSWORD,
            },
        )
    return client, token
