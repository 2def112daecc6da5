"""The two-node lab: network namespaces on a bridge, two nodes each booting its own systemd on
an overlay root (its "disk"), relay-target sinks, a trusted and an untrusted client.

The nodes run Debian 12 (an overlay over this machine's root, the default) or Debian 13 (`up
--debian 13`: an overlay over a trixie root built once, scripts/lab_debian13.py, with the web
manager as its rootless quadlet). Everything `up` creates is recorded in STATE/lab.json; `down`
removes exactly that. Addresses are in 198.18.0.0/24 only. Runs with the system python3 (no
dependencies).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lab_debian13

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("MAILRELAY_LAB_DIR", "/var/lib/mailrelay-lab"))
BRIDGE = "mrlab0"
PREFIX = "198.18.0"
VIP = f"{PREFIX}.100"
HOSTS = {"a": 11, "b": 12, "sink1": 21, "sink2": 22, "client": 30, "outside": 40}
NODES = ("a", "b")
# Where a node finds the lab's shared secret key (its SECRET_KEY_SOURCE).
NODE_SECRET_KEY = Path("/etc/mailrelay-lab.secret.key")
# Where install-node keeps the first admin's one-time password (root only) on each node.
INITIAL_ADMIN_PASSWORD = "/etc/mailrelay/initial-admin-password"  # noqa: S105 - a path
LAB_CONFIG = {
    "sender_domains": [
        {
            "name": "app.example",
            "comment": "lab: routed to sink1",
            "route": {"host": f"{PREFIX}.21", "port": 25, "tls_mode": "none"},
        },
        {
            "name": "billing.example",
            "comment": "lab: routed to sink2",
            "route": {"host": f"{PREFIX}.22", "port": 25, "tls_mode": "none"},
        },
    ],
    "trusted_networks": [{"cidr": f"{PREFIX}.30/32", "comment": "lab client"}],
}


def run(*cmd: str, check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=capture, text=True, check=False, **kw)
    if check and result.returncode != 0:
        raise SystemExit(f"lab: {' '.join(cmd)} failed:\n{result.stderr or result.stdout}")
    return result


def ns(host: str) -> str:
    return f"mrlab-{host}"


def ip(host: str) -> str:
    return f"{PREFIX}.{HOSTS[host]}"


def load() -> dict:
    path = STATE / "lab.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(state: dict) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "lab.json").write_text(json.dumps(state, indent=2))


# -- network ----------------------------------------------------------------------------------


def network_up(state: dict) -> None:
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        state.setdefault("links", []).append(BRIDGE)
        run("ip", "addr", "add", f"{PREFIX}.1/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
    for host in HOSTS:
        name = ns(host)
        if run("ip", "netns", "exec", name, "true", check=False).returncode != 0:
            run("ip", "netns", "add", name)
            state.setdefault("netns", []).append(name)
            outer = f"mrl-{host}"
            run("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", name)
            state.setdefault("links", []).append(outer)
            run("ip", "link", "set", outer, "master", BRIDGE)
            run("ip", "link", "set", outer, "up")
            run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
            run("ip", "netns", "exec", name, "ip", "addr", "add", f"{ip(host)}/24", "dev", "eth0")
            run("ip", "netns", "exec", name, "ip", "link", "set", "eth0", "up")
        save(state)


# -- sinks ------------------------------------------------------------------------------------


def sink_dir(name: str) -> Path:
    return STATE / "sinks" / name


def sink_start(state: dict, name: str) -> None:
    if sink_running(state, name):
        return
    directory = sink_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    log = open(STATE / f"{name}.log", "ab")  # noqa: SIM115 - kept by the child
    process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns(name),
            "env",
            f"PYTHONPATH={ROOT}",
            str(ROOT / ".venv" / "bin" / "python"),
            "-m",
            "tests.smtptarget",
            ip(name),
            "25",
            str(directory),
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    state.setdefault("sinks", {})[name] = process.pid
    save(state)
    wait(
        lambda: (
            run(
                "ip",
                "netns",
                "exec",
                ns(name),
                "bash",
                "-c",
                f"echo > /dev/tcp/{ip(name)}/25",
                check=False,
            ).returncode
            == 0
        ),
        f"{name} to listen",
        20,
    )


def sink_running(state: dict, name: str) -> bool:
    pid = state.get("sinks", {}).get(name)
    return bool(pid) and Path(f"/proc/{pid}").exists()


def sink_stop(state: dict, name: str) -> None:
    pid = state.get("sinks", {}).pop(name, None)
    if pid:
        kill_group(pid)
    save(state)


def sink_messages(name: str) -> list[dict]:
    files = sorted(sink_dir(name).glob("[0-9]*.json"), key=lambda p: int(p.stem))
    return [json.loads(p.read_text()) for p in files]


# -- nodes ------------------------------------------------------------------------------------


def node_dir(node: str) -> Path:
    return STATE / "nodes" / node


def debian(state: dict) -> str:
    """The nodes' Debian release: "12" (this machine's root) or "13" (`up --debian 13`)."""
    return str(state.get("debian", "12"))


# -- a booted root (a lab node, or scripts/lab_probe.py's machine) ----------------------------
# A machine is a directory `base` (upper, work, root, nspawn.pid, console.log; on Debian 13 also
# containers: its rootless podman storage) and a name: its cgroups and its nspawn machine name.


def machine_cgroups(name: str) -> list[Path]:
    return [Path(f"/sys/fs/cgroup/unified/{name}"), Path(f"/sys/fs/cgroup/systemd/{name}")]


def machine_pid(base: Path) -> int | None:
    """The PID of the machine's systemd (PID 1 inside), if it runs."""
    pid_file = base / "nspawn.pid"
    if not pid_file.exists():
        return None
    nspawn = int(pid_file.read_text())
    children = run("pgrep", "-P", str(nspawn), check=False).stdout.split()
    for child in children:
        if "systemd" in Path(f"/proc/{child}/comm").read_text():
            return int(child)
    return None


def machine_exec(base: Path, *cmd: str, check: bool = True, capture: bool = True, **kw):
    pid = machine_pid(base)
    if pid is None:
        raise SystemExit(f"lab: {base} is not running")
    return run(
        "nsenter", "-t", str(pid), "-a", "-r", "-w", *cmd, check=check, capture=capture, **kw
    )


def overlay_root(base: Path, release: str) -> tuple[Path, bool]:
    """The machine's root: an overlay over this machine's root (Debian 12) or over the kept
    Debian 13 root, writing only to base/upper (its disk). Says whether it mounted it now."""
    root = base / "root"
    for sub in ("upper", "work", "root"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if run("mountpoint", "-q", str(root), check=False).returncode == 0:
        return root, False
    lower = "/" if release == "12" else str(lab_debian13.build_root())
    run(
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}",
        str(root),
    )
    return root, True


def start_machine(base: Path, name: str, release: str, extra: list[str]) -> subprocess.Popen:
    """Boot the machine's systemd with nspawn, launched from cgroups of its own (this machine's
    PID 1 is not systemd: two machines in one tree would stop each other's services)."""
    root = base / "root"
    flags = ["--register=no", "--keep-unit", "-q", "-b", "-D", str(root), "-M", name]
    env = dict(os.environ)
    if release == "13":
        lab_debian13.prepare_node_root(root)
        storage = base / "containers"
        storage.mkdir(exist_ok=True)
        storage.chmod(0o1777)
        flags += [
            f"--bind-ro={lab_debian13.IMAGES}:{lab_debian13.NODE_IMAGE_DIR}",
            f"--bind={storage}:{lab_debian13.NODE_STORAGE}",
        ]
        # systemd 257 wants the unified hierarchy (it sees it without controllers here).
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
    # Fresh cgroups: a new systemd in the ones a power cut left (sub-cgroups of the old boot's
    # units) had its first units killed as they started (seen on Debian 13).
    remove_machine_cgroups(name)
    for cg in machine_cgroups(name):
        cg.mkdir()
    launcher = "".join(f"echo $$ > {cg}/cgroup.procs && " for cg in machine_cgroups(name))
    log = open(base / "console.log", "ab")  # noqa: SIM115 - kept by the child
    process = subprocess.Popen(
        ["bash", "-c", launcher + 'exec systemd-nspawn "$@"', "nspawn", *flags, *extra],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    (base / "nspawn.pid").write_text(str(process.pid))
    return process


def wait_booted(base: Path, what: str) -> None:
    wait(lambda: machine_pid(base) is not None, f"{what} to start", 60)

    def booted() -> bool:
        result = machine_exec(base, "systemctl", "is-system-running", check=False)
        return result.stdout.strip() in ("running", "degraded")

    try:
        wait(booted, f"{what} to boot", 240)
    except SystemExit as exc:
        # Say what the machine is still waiting for.
        jobs = machine_exec(base, "systemctl", "list-jobs", "--no-pager", check=False).stdout
        state = machine_exec(base, "systemctl", "is-system-running", check=False).stdout
        raise SystemExit(f"{exc}\nstate: {state.strip()}\npending jobs:\n{jobs}") from None


def stop_machine(base: Path, name: str) -> None:
    """A power cut: every process of the machine dies at once; its disk stays."""
    cg = machine_cgroups(name)[0] / "cgroup.kill"
    if cg.exists():
        cg.write_text("1")
    else:
        pid = machine_pid(base)
        if pid:
            os.kill(pid, signal.SIGKILL)
    wait(lambda: machine_pid(base) is None, f"{name} to die", 20)
    pid_file = base / "nspawn.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        pid_file.unlink()


# -- nodes ------------------------------------------------------------------------------------


def node_pid(node: str) -> int | None:
    """The PID of the node's systemd (PID 1 inside), if the node runs."""
    return machine_pid(node_dir(node))


def node_exec(
    node: str, *cmd: str, check: bool = True, capture: bool = True, **kw
) -> subprocess.CompletedProcess:
    if node_pid(node) is None:
        raise SystemExit(f"lab: node {node} is not running")
    return machine_exec(node_dir(node), *cmd, check=check, capture=capture, **kw)


def mount_root(node: str, state: dict) -> Path:
    root, mounted = overlay_root(node_dir(node), debian(state))
    if mounted and str(root) not in state.setdefault("mounts", []):
        state["mounts"].append(str(root))
        save(state)
    return root


def boot(node: str, state: dict) -> None:
    if node_pid(node):
        print(f"node {node} is running already")
        return
    root = mount_root(node, state)
    if node in state.get("wiped", []):
        # A replacement host has ssh host keys of its own, not the lost node's (nor the lab
        # machine's, which the overlay shows through).
        for key in (root / "etc" / "ssh").glob("ssh_host_*"):
            key.unlink()
        run("ssh-keygen", "-A", "-f", str(root))
    run("ip", "netns", "exec", ns(node), "ip", "link", "set", "eth0", "up", check=False)
    # The node's hostname and its settings live on its own disk (the overlay's upper dir).
    (root / "etc" / "hostname").write_text(f"relay-{node}\n")
    process = start_machine(
        node_dir(node),
        ns(node),
        debian(state),
        [
            f"--network-namespace-path=/run/netns/{ns(node)}",
            f"--bind-ro={ROOT}",
            # keepalived must add and remove the VIP: the node's own network namespace is its
            # to change.
            "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
        ],
    )
    state.setdefault("nodes", {})[node] = process.pid
    save(state)
    wait_booted(node_dir(node), f"node {node}")


def crash(node: str, state: dict) -> None:
    """A power cut: every process of the node dies at once; its disk stays."""
    # The instant of the cut, for whoever times what follows (scripts/bench failover).
    print(f"node {node}: power cut at {time.time():.3f}", flush=True)
    stop_machine(node_dir(node), ns(node))
    # A machine without power has no link and no addresses: the namespace outlives the node's
    # processes, so take its interface down and drop the VIP, as the power cut would.
    run("ip", "netns", "exec", ns(node), "ip", "link", "set", "eth0", "down", check=False)
    for prefix in ("24", "32"):
        vip = f"{VIP}/{prefix}"
        run("ip", "netns", "exec", ns(node), "ip", "addr", "del", vip, "dev", "eth0", check=False)
    state.get("nodes", {}).pop(node, None)
    save(state)


def wipe(node: str, state: dict) -> None:
    """The crashed node's disk is lost: its overlay (queue, replica, shadow store, database,
    keys, settings) goes. The next `boot` brings up a freshly installed replacement."""
    root = node_dir(node) / "root"
    run("umount", "-l", str(root), check=False)
    for sub in ("upper", "work", "containers"):
        shutil.rmtree(node_dir(node) / sub, ignore_errors=True)
    if node not in state.setdefault("wiped", []):
        state["wiped"].append(node)
    save(state)


def remove_machine_cgroups(name: str) -> None:
    """Remove a stopped machine's cgroups (they empty a moment after its processes die)."""

    def gone() -> bool:
        for cg in machine_cgroups(name):
            remove_cgroup(cg)
        return not any(cg.exists() for cg in machine_cgroups(name))

    wait(gone, f"the cgroups of {name} to empty", 20)


def remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


# -- install ----------------------------------------------------------------------------------


def node_env(node: str, extra: dict[str, str]) -> str:
    peer = peer_of(node)
    values = {
        "NODE_ID": node,
        "NODE_IP": ip(node),
        "PEER_NODE_IP": ip(peer),
        "VIP_ADDRESS": VIP,
        # Near the top: the peer waits a skew time of (256 - priority) / 256 adverts before it
        # takes over (after a priority-0 advert too); at 100 that was 0.61 s at 1 s adverts.
        "VRRP_PRIORITY": "254" if node == "a" else "253",
        "VRRP_INTERFACE": "eth0",
        "CLUSTER_MODE": "master" if node == "a" else "slave",
        "NODE_HOSTNAME": f"relay-{node}.lab.example",
        "HTTPS_HOST": "0.0.0.0",  # noqa: S104 - inside the node's own lab namespace
        "HTMX_SOURCE": "local",
        # The shared key, copied onto the node's disk by install() (a Debian 13 node does not
        # see this machine's files).
        "SECRET_KEY_SOURCE": str(NODE_SECRET_KEY),
        # Shadow copies: both nodes share one token (made in `up`).
        "SHADOW_TOKEN": (STATE / "shadow.token").read_text().strip(),
        **extra,
    }
    return "".join(f"{k}={v}\n" for k, v in values.items())


def install(node: str, extra: dict[str, str]) -> None:
    root = node_dir(node) / "root"
    env_path = Path("/etc/mailrelay-lab.env")
    state = load()
    settings = state.setdefault("settings", {}).setdefault(node, {})
    settings.update(extra)
    save(state)
    (root / env_path.relative_to("/")).write_text(node_env(node, settings))
    key = root / NODE_SECRET_KEY.relative_to("/")
    key.touch(mode=0o600)
    key.write_bytes((STATE / "secret.key").read_bytes())
    # The node installs offline: a Debian 12 node sees this machine's uv and its cache through
    # the overlay, a Debian 13 node has its own (put there when its root was built).
    uv = lab_debian13.host_uv() if debian(state) == "12" else lab_debian13.NODE_UV
    env = ["env", f"UV={uv}", "UV_OFFLINE=1", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    result = node_exec(
        node, *env, str(ROOT / "scripts" / "install-node"), str(env_path), check=False
    )
    (node_dir(node) / "install.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"lab: install-node on {node} failed:\n{result.stdout}{result.stderr}")


def mailrelay(node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return node_exec(
        node,
        "runuser",
        "-u",
        "mailrelay",
        "--",
        "bash",
        "-c",
        "set -a; . /etc/mailrelay/mailrelay.env; set +a; "
        'exec /opt/mailrelay/venv/bin/mailrelay "$@"',
        "mailrelay",
        *args,
        check=check,
    )


def up(release: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit("lab: run as root")
    state = load()
    if state.get("nodes") and debian(state) != release:
        raise SystemExit(
            f"lab: the lab runs Debian {debian(state)} nodes: `scripts/lab down` first"
        )
    if release == "13":
        # Once: the root (kept in lab_debian13.ROOTS); every up: the web image of this tree.
        lab_debian13.build_root()
        lab_debian13.web_image_archive()
    STATE.mkdir(parents=True, exist_ok=True)
    state["created"] = True
    state["debian"] = release
    save(state)
    key = STATE / "secret.key"
    if not key.exists():
        from base64 import urlsafe_b64encode

        key.write_text(urlsafe_b64encode(os.urandom(32)).decode() + "\n")
        key.chmod(0o600)
    shadow_token = STATE / "shadow.token"
    if not shadow_token.exists():
        shadow_token.write_text(os.urandom(24).hex() + "\n")
        shadow_token.chmod(0o600)
    network_up(state)
    for sink in ("sink1", "sink2"):
        sink_start(state, sink)
    boot("a", state)
    install("a", {})
    token = cluster_token("a")
    config = json.dumps(LAB_CONFIG, indent=2)
    (STATE / "lab-config.json").write_text(config)
    node_exec("a", "sh", "-c", "cat > /var/lib/mailrelay/lab-config.json", input=config)
    mailrelay("a", "config-import", "/var/lib/mailrelay/lab-config.json")
    applied = mailrelay("a", "config-apply", check=False)
    print(applied.stdout.strip() or applied.stderr.strip())
    boot("b", state)
    install(
        "b",
        {
            "MASTER_API_URL": f"https://{ip('a')}:8443",
            "MASTER_API_TOKEN": token,
            "MASTER_CERT_FINGERPRINT": certificate_fingerprint("a"),
        },
    )
    # A returning a asks b what b took over: a needs b's API, token and fingerprint (b uses
    # its MASTER_* settings for a).
    install(
        "a",
        {
            "PEER_API_URL": f"https://{ip('b')}:8443",
            "PEER_API_TOKEN": cluster_token("b"),
            "PEER_CERT_FINGERPRINT": certificate_fingerprint("b"),
        },
    )
    # Queue sync: each node accepts the other's key, from the other's address, for rrsync into
    # its replica only; each pins the other's ssh host key (no trust on first use).
    keys = {n: sync_keys(n) for n in NODES}
    install("a", keys["b"])
    install("b", keys["a"])
    version = wait_until_ready()
    print_summary(version)


def peer_of(node: str) -> str:
    return "b" if node == "a" else "a"


def cluster_token(node: str) -> str:
    """A new cluster token on `node`, for its peer's calls."""
    return mailrelay(
        node, "create-token", f"lab-peer-{int(time.time())}", "--kind", "cluster"
    ).stdout.strip()


def certificate_fingerprint(node: str) -> str:
    wait(
        lambda: (
            node_exec(node, "test", "-s", "/var/lib/mailrelay/tls/node.crt", check=False).returncode
            == 0
        ),
        f"node {node}'s HTTPS certificate",
        60,
    )
    out = node_exec(
        node,
        "openssl",
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        "/var/lib/mailrelay/tls/node.crt",
    ).stdout
    return out.strip().split("=", 1)[-1]


def sync_keys(node: str) -> dict[str, str]:
    """What the peer needs to accept this node's queue sync and to pin its ssh host key."""
    pubkey = node_exec(node, "cat", "/etc/mailrelay/sync_ed25519.pub").stdout.strip()
    host_key = node_exec(node, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
    return {"SYNC_PEER_PUBKEY": pubkey, "SYNC_PEER_HOST_KEY": " ".join(host_key)}


def join_replacement(node: str, state: dict) -> None:
    """A freshly installed host takes the lost node's place, as an operator would do it: install
    it with the node's settings, hand the survivor its new token, certificate and keys, and, for
    a master, import the configuration the survivor runs. keepalived starts it as BACKUP (with
    nopreempt the survivor keeps the VIP)."""
    survivor = peer_of(node)
    if node_pid(survivor) is None:
        raise SystemExit(f"lab: the replacement of {node} joins through {survivor}: boot it first")
    install(node, {})
    master = state["settings"][node].get("MASTER_API_URL") is None
    prefix = "MASTER" if master else "PEER"
    install(
        survivor,
        {
            f"{prefix}_API_TOKEN": cluster_token(node),
            f"{prefix}_CERT_FINGERPRINT": certificate_fingerprint(node),
            **sync_keys(node),
        },
    )
    if master:
        node_exec(survivor, "rm", "-f", "/var/lib/mailrelay/replacement.json")
        mailrelay(survivor, "config-export", "/var/lib/mailrelay/replacement.json")
        exported = node_exec(survivor, "cat", "/var/lib/mailrelay/replacement.json").stdout
        node_exec(survivor, "rm", "-f", "/var/lib/mailrelay/replacement.json")
        node_exec(
            node,
            "runuser",
            "-u",
            "mailrelay",
            "--",
            "sh",
            "-c",
            "umask 077 && cat > /var/lib/mailrelay/replacement.json",
            input=exported,
        )
        print(
            mailrelay(node, "config-import", "/var/lib/mailrelay/replacement.json").stdout.strip()
        )
        node_exec(node, "rm", "-f", "/var/lib/mailrelay/replacement.json")
        print(mailrelay(node, "config-apply").stdout.strip())
    # install() saved the survivor's new settings: the state this began with is stale, and
    # saving it would hand the next install the lost node's certificate and keys again.
    state = load()
    state["wiped"].remove(node)
    save(state)
    version = wait_until_ready()
    print(
        f"node {node} joined as a replacement: both nodes run config version {version}; "
        f"the VIP stays on {vip_owner()}"
    )
    print(f"  login on {node}: admin with the one-time password {admin_password(node)}")


def config_versions() -> dict[str, int | None]:
    """The master version each node's Postfix runs, as `mailrelay config-status` says."""
    versions: dict[str, int | None] = {}
    for node in NODES:
        out = mailrelay(node, "config-status", check=False).stdout
        match = re.search(r"runs master version (\d+)", out)
        versions[node] = int(match.group(1)) if match else None
    return versions


def wait_until_ready(timeout: float = 120) -> int:
    """Return only when both nodes run the same applied version: a slave that has not applied
    it yet refuses every sender, and the lab's first failover would meet that."""
    seen: dict[str, int | None] = {}

    def same() -> bool:
        seen.update(config_versions())
        return seen["a"] is not None and seen["a"] == seen["b"]

    try:
        wait(same, "both nodes to run the same applied config version", timeout)
    except SystemExit as exc:
        raise SystemExit(f"{exc}: {seen}") from None
    return int(seen["a"] or 0)


def print_summary(version: int) -> None:
    print(f"""
The lab is up: both nodes run config version {version} (a applied it, b pulled it).
  GUI via the VIP:  https://{VIP}:8443/
  GUI of node a:    https://{ip("a")}:8443/   (master: edit the configuration here)
  GUI of node b:    https://{ip("b")}:8443/   (slave: read-only configuration)
  Login: admin with each node's one-time password (change it at the first login):
    node a: {admin_password("a")}
    node b: {admin_password("b")}

Try it (from the trusted client {ip("client")} and the untrusted {ip("outside")}):
  scripts/lab exec client swaks --server {VIP} --from app@app.example --to you@dest.example
      -> relayed to sink1 ({ip("sink1")}); see: scripts/lab sink sink1 list
  scripts/lab exec client swaks --server {VIP} --from pay@billing.example --to you@dest.example
      -> relayed to sink2 ({ip("sink2")}); see: scripts/lab sink sink2 count
  scripts/lab exec client swaks --server {VIP} --from x@blocked.example --to you@dest.example
      -> 553 sender domain not allowed
  scripts/lab exec outside swaks --server {VIP} --from app@app.example --to you@dest.example
      -> 554 relay access denied
Failover: scripts/lab crash a; scripts/lab status; scripts/lab boot a
""")


def admin_password(node: str) -> str:
    """The one-time password install-node gave the node's first admin."""
    result = node_exec(node, "cat", INITIAL_ADMIN_PASSWORD, check=False)
    return result.stdout.strip() or f"(none: {INITIAL_ADMIN_PASSWORD} is missing)"


def vip_owner() -> str | None:
    for node in NODES:
        out = run("ip", "netns", "exec", ns(node), "ip", "-o", "addr", "show", check=False).stdout
        if f" {VIP}/" in out:
            return node
    return None


def status() -> None:
    state = load()
    if not state:
        print("the lab is down")
        return
    for node in NODES:
        pid = node_pid(node)
        line = f"node {node} ({ip(node)}): {'running' if pid else 'stopped'}"
        if pid:
            # Debian 13's Postfix runs its main instance as postfix.service.
            postfix = "postfix@-" if debian(state) == "12" else "postfix"
            units = node_exec(
                node, "systemctl", "is-active", postfix, "keepalived", "postgresql", check=False
            ).stdout.split()
            units.insert(2, web_state(node, state))
            line += "  postfix/keepalived/web/postgresql: " + "/".join(units)
        print(line)
    print(f"VIP {VIP}: {vip_owner() or 'nobody'}")
    for sink in ("sink1", "sink2"):
        print(
            f"{sink} ({ip(sink)}): {'up' if sink_running(state, sink) else 'down'}, "
            f"{len(sink_messages(sink))} messages"
        )


def web_state(node: str, state: dict) -> str:
    """Whether the node's web manager runs: the native unit on Debian 12, mailrelay's quadlet
    (systemctl --user) on Debian 13."""
    if debian(state) == "12":
        command = ["systemctl", "is-active", "mailrelay-web"]
    else:
        command = [*lab_debian13.AS_MAILRELAY, "systemctl", "--user", "is-active", "mailrelay-web"]
    return node_exec(node, *command, check=False).stdout.strip() or "unknown"


def partition(on: bool) -> None:
    # A firewall in each node's namespace, not a route: keepalived sends its unicast adverts on
    # a raw socket bound to the interface, which a blackhole route does not stop. Everything
    # else (the VIP, the sinks, the clients) stays reachable from both nodes.
    for node, peer in (("a", "b"), ("b", "a")):
        for chain, side in (("INPUT", "-s"), ("OUTPUT", "-d")):
            rule = [chain, side, f"{ip(peer)}/32", "-j", "DROP"]
            present = (
                run(
                    "ip", "netns", "exec", ns(node), "iptables", "-C", *rule, check=False
                ).returncode
                == 0
            )
            if on and not present:
                run("ip", "netns", "exec", ns(node), "iptables", "-I", *rule)
            elif not on and present:
                run("ip", "netns", "exec", ns(node), "iptables", "-D", *rule)


def down() -> None:
    state = load()
    for node in NODES:
        if node_pid(node) or (node_dir(node) / "nspawn.pid").exists():
            crash(node, state)
        remove_machine_cgroups(ns(node))
    for pid in list(state.get("sinks", {}).values()):
        kill_group(pid)
    for mount in reversed(state.get("mounts", [])):
        run("umount", "-l", mount, check=False)
    for name in state.get("netns", []):
        run("ip", "netns", "del", name, check=False)
    for link in reversed(state.get("links", [])):
        run("ip", "link", "del", link, check=False)
    if STATE.exists() and (STATE / "lab.json").exists():
        shutil.rmtree(STATE, ignore_errors=True)
    print("the lab is down")


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def wait(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, SystemExit):
            pass
        time.sleep(0.2)
    raise SystemExit(f"lab: timed out waiting for {what}")


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    command, args = argv[0], argv[1:]
    state = load()
    if command == "up":
        release = args[args.index("--debian") + 1] if "--debian" in args else "12"
        if release not in ("12", "13"):
            raise SystemExit("lab: up [--debian 12|13]")
        up(release)
    elif command == "down":
        down()
    elif command == "status":
        status()
    elif command == "admin-password":
        print(admin_password(args[0]))
    elif command == "crash":
        crash(args[0], state)
        if "--wipe" in args[1:]:
            wipe(args[0], state)
    elif command == "boot":
        replacement = args[0] in state.get("wiped", [])
        boot(args[0], state)
        if replacement:
            join_replacement(args[0], state)
    elif command == "install":
        # Re-run install-node on a running node with its lab settings (after a code change),
        # changed by any NAME=VALUE given (kept for later installs).
        changes = dict(arg.split("=", 1) for arg in args[1:] if "=" in arg)
        install(args[0], changes)
        print(f"node {args[0]}: installed")
    elif command == "partition":
        partition(True)
    elif command == "heal":
        partition(False)
    elif command == "exec":
        host, cmd = args[0], args[1:]
        if host in NODES:
            sys.exit(node_exec(host, *cmd, check=False, capture=False).returncode)
        sys.exit(subprocess.run(["ip", "netns", "exec", ns(host), *cmd], check=False).returncode)
    elif command == "sink":
        name, action = args[0], args[1]
        if action == "stop":
            sink_stop(state, name)
        elif action == "start":
            sink_start(state, name)
        elif action == "count":
            print(len(sink_messages(name)))
        elif action == "list":
            for message in sink_messages(name):
                print(message["message_id"])
        elif action == "show":
            for message in sink_messages(name):
                print(json.dumps(message))
        else:
            raise SystemExit("lab: sink NAME stop|start|count|list|show")
    else:
        raise SystemExit(f"lab: unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
