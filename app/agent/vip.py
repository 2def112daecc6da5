"""The privileged half of a planned switchover: give this node's VIP to the peer.

`systemctl stop keepalived` makes keepalived send a priority-0 advertisement and remove the VIP;
the peer takes over after its skew time (about 0.6 s, see ../shared notes: postfix-ha.md). Once
the address has left this node, keepalived is started again: both nodes are `state BACKUP` with
`nopreempt`, so it comes back as BACKUP and the peer keeps the VIP. keepalived is started again
whatever happened before, so that this node is never left without it.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time

from app.agent.postfix import AgentError, tool_said
from app.agent.protocol import Handover
from app.cluster.vip import VipCheckError, vip_held
from app.messages import Message, joined, message_of

UNIT = "keepalived.service"
POLL_SECONDS = 0.05
COMMAND_TIMEOUT = 30


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        # The operating system's reason, quoted as it is.
        raise AgentError(
            Message("{tool} failed: {error}", tool=" ".join(command), error=str(exc))
        ) from None


def present(vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether the address is configured on an interface of this node (the same check as the
    unprivileged side's, as an agent error when it cannot be made)."""
    try:
        return vip_held(str(vip))
    except VipCheckError as exc:
        raise AgentError(message_of(exc)) from None


def _systemctl(action: str) -> Message | None:
    """None when it worked, else what systemctl said."""
    result = _run("systemctl", action, UNIT)
    if result.returncode == 0:
        return None
    return tool_said(f"systemctl {action} {UNIT}", result.stderr.strip(), result.returncode)


def handover(vip: ipaddress.IPv4Address | ipaddress.IPv6Address, timeout: float) -> Handover:
    """Stop keepalived, wait until the VIP has left this node (at most `timeout` s), start
    keepalived again. Returns after how many seconds the address was gone and the whole time."""
    started = time.monotonic()
    if not present(vip):
        raise AgentError(
            Message("{vip} is not on this node: there is nothing to hand over", vip=str(vip))
        )
    problem: str | None = _systemctl("stop")
    released = None
    if problem is None:
        while present(vip):
            if time.monotonic() - started > timeout:
                problem = Message(
                    "{vip} was still on this node {seconds:g} s after keepalived stopped",
                    vip=str(vip),
                    seconds=timeout,
                )
                break
            time.sleep(POLL_SECONDS)
        else:
            released = time.monotonic() - started
    not_started = _systemctl("start")
    if not_started is not None:
        problem = joined("; ", [problem, not_started]) if problem else not_started
        raise AgentError(
            Message("{problem} (keepalived is NOT running on this node)", problem=problem)
        )
    if problem is not None:
        raise AgentError(Message("{problem} (keepalived was started again)", problem=problem))
    assert released is not None
    return {"released_seconds": released, "seconds": time.monotonic() - started}
