"""A single Debian 13 test machine, `d13probe`, booted by the lab's own functions from an overlay
of the Debian 13 node root, on a private network (no bridge, no lab addresses): to try the
Debian 13 node (install-node, the web manager's quadlet) without the two-node lab.

    python3 scripts/lab_probe.py up | install [--check] | exec CMD... | crash | boot | down

Its disk is lab_debian13.ROOTS/d13probe: `up` starts from a fresh one, `crash` is a power cut
(the disk stays), `boot` starts the machine again from its disk, `down` stops it and removes its
mounts and cgroups. Run as root.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import lab
import lab_debian13

NAME = "d13probe"
BASE = lab_debian13.ROOTS / NAME
# Documentation addresses on a veth pair inside the probe's own network namespace.
PROBE_ENV = {
    "NODE_ID": "p",
    "NODE_IP": "192.0.2.11",
    "PEER_NODE_IP": "192.0.2.12",
    "VIP_ADDRESS": "192.0.2.100",
    "VRRP_PRIORITY": "254",
    "VRRP_INTERFACE": "eth0",
    "CLUSTER_MODE": "master",
    "NODE_HOSTNAME": "relay-p.lab.example",
    "HTTPS_HOST": "0.0.0.0",  # noqa: S104 - inside the probe's own network namespace
    "HTMX_SOURCE": "local",
    "SHADOW_TOKEN": "d13probe-shadow-token-of-a-test-machine-only",
}


def up(fresh: bool) -> None:
    if lab.machine_pid(BASE):
        print(f"{NAME} is running already")
        return
    if fresh:
        down()
        shutil.rmtree(BASE, ignore_errors=True)
    lab.overlay_root(BASE, "13")
    lab_debian13.web_image_archive()
    lab.start_machine(BASE, NAME, "13", ["--private-network", f"--bind-ro={lab.ROOT}"])
    lab.wait_booted(BASE, NAME)
    for step in (
        ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
        ["ip", "addr", "add", f"{PROBE_ENV['NODE_IP']}/24", "dev", "eth0"],
        ["ip", "link", "set", "eth0", "up"],
        ["ip", "link", "set", "eth1", "up"],
    ):
        lab.machine_exec(BASE, *step)
    print(f"{NAME} is up (systemd PID {lab.machine_pid(BASE)})")


def install(*options: str) -> int:
    env_file = BASE / "root" / "etc" / "mailrelay-probe.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in PROBE_ENV.items()))
    result = lab.machine_exec(
        BASE,
        "env",
        f"UV={lab_debian13.NODE_UV}",
        "UV_OFFLINE=1",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        str(lab.ROOT / "scripts" / "install-node"),
        "/etc/mailrelay-probe.env",
        *options,
        check=False,
        capture=False,
    )
    return result.returncode


def down() -> None:
    if lab.machine_pid(BASE) or (BASE / "nspawn.pid").exists():
        lab.stop_machine(BASE, NAME)
    subprocess.run(["umount", "-l", str(BASE / "root")], check=False, capture_output=True)
    lab.remove_machine_cgroups(NAME)
    print(f"{NAME} is down")


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command in ("up", "boot"):
        up(fresh=command == "up")
    elif command == "crash":
        lab.stop_machine(BASE, NAME)
    elif command == "install":
        return install(*argv[1:])
    elif command == "exec":
        return lab.machine_exec(BASE, *argv[1:], check=False, capture=False).returncode
    elif command == "down":
        down()
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
