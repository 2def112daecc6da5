"""The agent's verbs for the cluster panel and the switchover, run by the real agent code.

`status` counts the replica with a real PostfixTools against a scratch Postfix configuration
(postconf reads it; no Postfix runs). `vip_handover` runs in a network namespace of its own with
the VIP on its loopback; `systemctl` there is a stand-in script on PATH, because this test
must not stop the machine's keepalived: its `stop` removes the address the way keepalived does
(after a delay, to exercise the wait), or, when told, leaves it. The real keepalived takes part
in the lab's switchover test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.agent import callers
from app.agent.postfix import PostfixTools
from app.agent.server import Agent
from app.settings import load_agent_settings

ROOT = Path(__file__).resolve().parents[2]
VIP = "198.18.9.100"


def write(path: Path, size: int, mode: int = 0o700) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    path.chmod(mode)


@pytest.mark.skipif(shutil.which("postconf") is None, reason="needs Postfix's postconf")
async def test_status_counts_the_replica_of_the_peers_queue(tmp_path):
    spool, replica, config = tmp_path / "spool", tmp_path / "replica", tmp_path / "etc"
    config.mkdir()
    (config / "main.cf").write_text(f"queue_directory = {spool}\n")
    (config / "master.cf").write_text("")
    write(spool / "deferred" / "A" / "4dLq2G1xZ9z9vxL", 10)
    write(spool / "incoming" / "4dLq2G1xZ9z9vxM", 10)
    # The replica: message files of every queue part, in hashed subdirectories too...
    write(replica / "deferred" / "A" / "4dLq2G1xZ9z9vxA", 1000)
    write(replica / "active" / "4dLq2G1xZ9z9vxB", 200)
    write(replica / "incoming" / "4dLq2G1xZ9z9vxC", 30, mode=0o600)  # still being written
    write(replica / "hold" / "4dLq2G1xZ9z9vxD", 4)
    # ...and what are no messages: the delivery logs copied with them.
    write(replica / "bounce" / "A" / "4dLq2G1xZ9z9vxA", 5000)
    write(replica / "defer" / "A" / "4dLq2G1xZ9z9vxA", 5000)

    agent = Agent(PostfixTools(config, tmp_path / "maps", replica=replica), load_agent_settings({}))
    me = callers.identify(os.getpid(), os.getuid(), os.getgid())  # root: every verb
    answer = await agent.handle({"verb": "status"}, me)

    assert answer["ok"], answer
    result = answer["result"]
    assert result["replica"] == {"files": 4, "bytes": 1234}
    assert result["queue"] == {"incoming": 1, "active": 0, "deferred": 1, "hold": 0, "maildrop": 0}
    assert result["postfix_running"] is False

    shutil.rmtree(replica)  # a node that never received a copy
    answer = await agent.handle({"verb": "status"}, me)
    assert answer["result"]["replica"] == {"files": 0, "bytes": 0}


# -- vip_handover -------------------------------------------------------------------------------

FAKE_SYSTEMCTL = """#!/bin/sh
# Stand-in for systemctl: records the call; `stop` takes the VIP away as keepalived would.
echo "$*" >> "$HANDOVER_LOG"
case "$1" in
  stop)
    [ -e "$HANDOVER_KEEP_VIP" ] ||
      (sleep 0.3; ip addr del "$HANDOVER_VIP/32" dev lo) >/dev/null 2>&1 & ;;
  start)
    [ -e "$HANDOVER_START_FAILS" ] && { echo "Job for keepalived.service failed." >&2; exit 1; } ;;
esac
exit 0
"""

# The real agent's verb, in the namespace (`ip netns exec` runs a program, not a coroutine).
CALL = """
import asyncio, json, sys
from pathlib import Path
import os
from app.agent import callers
from app.agent.postfix import PostfixTools
from app.agent.server import Agent
from app.settings import load_agent_settings
agent = Agent(PostfixTools(Path("/nonexistent"), Path("/nonexistent")), load_agent_settings({}))
me = callers.identify(os.getpid(), os.getuid(), os.getgid())
print(json.dumps(asyncio.run(agent.handle(json.loads(sys.argv[1]), me))))
"""


class Namespace:
    def __init__(self, folder: Path) -> None:
        self.name = f"mr-ho-{os.getpid()}"
        self.folder = folder
        self.log = folder / "systemctl.log"
        (folder / "bin").mkdir()
        systemctl = folder / "bin" / "systemctl"
        systemctl.write_text(FAKE_SYSTEMCTL)
        systemctl.chmod(0o755)

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def start(self) -> Namespace:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.ip("link", "set", "lo", "up")
        self.ip("addr", "add", f"{VIP}/32", "dev", "lo")
        return self

    def stop(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def handover(self, **args: object) -> dict:
        return self.call("vip_handover", {"vip": VIP} | args)

    def call(self, verb: str, args: dict[str, object]) -> dict:
        """The agent's answer to one request, run inside this namespace."""
        env = os.environ | {
            "PATH": f"{self.folder / 'bin'}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "HANDOVER_LOG": str(self.log),
            "HANDOVER_VIP": VIP,
            "HANDOVER_KEEP_VIP": str(self.folder / "keep-vip"),
            "HANDOVER_START_FAILS": str(self.folder / "start-fails"),
        }
        request = {"verb": verb, "args": args}
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", CALL, json.dumps(request)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        return json.loads(result.stdout.splitlines()[-1])

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def holds_vip(self) -> bool:
        out = subprocess.run(
            ["ip", "-n", self.name, "-o", "addr", "show", "to", f"{VIP}/32"],
            capture_output=True,
            text=True,
            check=True,
        )
        return bool(out.stdout.strip())


@pytest.fixture
def ns(tmp_path):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("vip_handover test: needs root and iproute2 (a network namespace)")
    namespace = Namespace(tmp_path)
    try:
        yield namespace.start()
    finally:
        namespace.stop()


def test_the_handover_stops_keepalived_waits_for_the_vip_to_leave_and_starts_it(ns):
    answer = ns.handover()
    assert answer["ok"], answer
    assert ns.calls() == ["stop keepalived.service", "start keepalived.service"]
    assert not ns.holds_vip()
    # It waited for the address to go (the stand-in removes it after 0.3 s).
    assert 0.3 <= answer["result"]["released_seconds"] <= answer["result"]["seconds"] < 5


def test_a_vip_that_stays_is_a_failure_and_keepalived_runs_again(ns):
    (ns.folder / "keep-vip").touch()
    answer = ns.handover(timeout=1)
    assert not answer["ok"]
    assert answer["error"] == (
        f"{VIP} was still on this node 1 s after keepalived stopped (keepalived was started again)"
    )
    assert ns.calls() == ["stop keepalived.service", "start keepalived.service"]


def test_keepalived_that_does_not_start_again_is_said_loudly(ns):
    (ns.folder / "start-fails").touch()
    answer = ns.handover()
    assert not answer["ok"]
    assert (
        "systemctl start keepalived.service: Job for keepalived.service failed."
        in (answer["error"])
    )
    assert answer["error"].endswith("(keepalived is NOT running on this node)")


def test_a_node_without_the_vip_does_not_touch_keepalived(ns):
    ns.ip("addr", "del", f"{VIP}/32", "dev", "lo")
    answer = ns.handover()
    assert answer == {
        "ok": False,
        "error": f"{VIP} is not on this node: there is nothing to hand over",
        # The same as a message, for the caller to show in its user's language.
        "message": {
            "key": "{vip} is not on this node: there is nothing to hand over",
            "params": {"vip": VIP},
        },
    }
    assert ns.calls() == []


def test_the_agent_says_whether_the_vip_is_on_this_node(ns):
    """For a web app under rootless Podman, which cannot see the host's interfaces."""
    assert ns.call("vip_held", {"vip": VIP}) == {"ok": True, "result": True}
    ns.ip("addr", "del", f"{VIP}/32", "dev", "lo")
    assert ns.call("vip_held", {"vip": VIP}) == {"ok": True, "result": False}
    assert ns.call("vip_held", {"vip": "nope"})["error"] == "vip must be an IP address"


def test_the_arguments_are_checked(ns):
    assert ns.handover(vip="not-an-address")["error"] == "vip must be an IP address"
    assert ns.handover(timeout=3600)["error"] == "timeout must be 1-60 seconds"
    assert ns.calls() == []
