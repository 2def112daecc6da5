"""The agent allows each calling unit only its own verbs, identified by the kernel.

The real agent runs in a cgroup namespace of its own (rooted at a scratch cgroup), so that the
cgroups made for the test look to it as a node's units do: /system.slice/mailrelay-web.service
and so on. Callers are real processes of an unprivileged user (nobody) placed in those cgroups
before they connect, as systemd places a unit's processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
UNITS = (
    "system.slice/mailrelay-web.service",
    "system.slice/mailrelay-queue-sync.service",
    "system.slice/mailrelay-made-up.service",
    "elsewhere",
)
NOBODY = 65534

# A client of the agent's protocol that needs nothing of this repository (it runs as nobody).
CLIENT = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.sendall(json.dumps({"verb": sys.argv[2], "args": json.loads(sys.argv[3])}).encode() + b"\\n")
print(sock.makefile().readline(), end="")
"""


def _hierarchy() -> Path | None:
    for root in CGROUP_ROOTS:
        if (root / "cgroup.procs").exists() and (root / "cgroup.subtree_control").exists():
            return root
    return None


class Node:
    """A scratch cgroup tree with the agent at its root."""

    def __init__(self) -> None:
        root = _hierarchy()
        assert root is not None
        self.cgroup = root / f"mailrelay-callers-{os.getpid()}"
        self.base = Path(tempfile.mkdtemp(prefix="mailrelay-callers-"))
        self.base.chmod(0o755)
        self.socket = self.base / "agent.sock"
        self.agent: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        for unit in UNITS:
            (self.cgroup / unit).mkdir(parents=True)
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(ROOT),
            "AGENT_SOCKET": str(self.socket),
            "AGENT_SOCKET_MODE": "0666",
            "POSTFIX_MAPS_ROOT": str(self.base / "maps"),
        }
        self.agent = subprocess.Popen(
            [
                "sh",
                "-c",
                f'echo $$ > {self.cgroup}/cgroup.procs && exec unshare --cgroup "$@"',
                "agent",
                sys.executable,
                "-m",
                "app.agent",
                "serve",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / "agent.log", "wb"),  # noqa: SIM115 - lives with the agent
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if time.monotonic() > deadline or self.agent.poll() is not None:
                raise RuntimeError(f"the agent did not start: {self.log()}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        return (self.base / "agent.log").read_text()

    def call(self, unit: str, verb: str, uid: int = NOBODY, **args: object) -> dict:
        """One request from a process of `uid` in the cgroup of `unit`."""
        become = [] if uid == 0 else ["setpriv", f"--reuid={uid}", f"--regid={uid}"]
        become += ["--clear-groups"] if become else []
        result = subprocess.run(
            [
                "sh",
                "-c",
                f'echo $$ > {self.cgroup / unit}/cgroup.procs && exec "$@"',
                "caller",
                *become,
                "/usr/bin/python3",
                "-c",
                CLIENT,
                str(self.socket),
                verb,
                json.dumps(args),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(result.stdout)

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.terminate()
            self.agent.wait(timeout=10)
        for unit in UNITS:
            path = self.cgroup / unit
            while path != self.cgroup:
                if path.exists() and not any(p.is_dir() for p in path.iterdir()):
                    path.rmdir()
                path = path.parent
        if self.cgroup.exists():
            self.cgroup.rmdir()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def node():
    if os.geteuid() != 0 or _hierarchy() is None:
        pytest.skip("needs root and a cgroup v2 hierarchy (unified or hybrid)")
    if shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists():
        pytest.skip("needs setpriv and /usr/bin/python3")
    scratch = Node()
    try:
        yield scratch.start()
    finally:
        scratch.stop()


VIP = {"vip": "198.18.77.1"}


def test_the_agent_refuses_a_verb_its_caller_unit_may_not_use(node):
    web = "system.slice/mailrelay-web.service"
    sync = "system.slice/mailrelay-queue-sync.service"
    # The web app may ask whether the VIP is here (an answer, whatever it is)...
    assert node.call(web, "vip_held", **VIP) == {"ok": True, "result": False}
    # ...but not take over the replica, which only the VRRP event reader does on promotion.
    answer = node.call(web, "import_replica")
    assert answer["ok"] is False
    assert answer["error"].startswith(
        "refused: mailrelay-web.service may not use the verb 'import_replica' (uid=65534,"
    )
    # The queue-sync job syncs; it may not install maps.
    answer = node.call(sync, "apply", version=1, files={})
    assert answer["error"].startswith(
        "refused: mailrelay-queue-sync.service may not use the verb 'apply'"
    )
    assert "refused: mailrelay-queue-sync.service may not use the verb 'apply'" in node.log()


def test_a_caller_the_agent_does_not_know_is_refused(node):
    for unit in ("system.slice/mailrelay-made-up.service", "elsewhere"):
        answer = node.call(unit, "vip_held", **VIP)
        assert answer["ok"] is False
        assert answer["error"].startswith("refused: the agent does not know this caller")
        assert f"cgroup /{unit})" in answer["error"]


def test_root_may_use_every_verb(node):
    assert node.call("elsewhere", "vip_held", uid=0, **VIP) == {"ok": True, "result": False}
