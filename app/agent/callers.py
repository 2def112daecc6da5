"""Who is calling the agent, and which verbs that caller may use.

The socket's group (mailrelay) lets the web app and every job in; each of them needs only a
few verbs. The kernel says who connected (SO_PEERCRED: pid, uid, gid) and, through
/proc/PID/cgroup, which systemd unit that process runs in. Only root can create a cgroup under
system.slice, so the unit name of a system service cannot be forged by the mailrelay user.
The table follows the code: each unit gets the verbs its code calls (app/agent/client.py
methods, named after the verbs of app/agent/protocol.py).

  root (uid 0)                 every verb: root needs no agent to run postsuper
  a login session, or a caller outside this agent's cgroup namespace (put there from the
  host, as the lab's `nsenter` does): an administrator at a shell running the `mailrelay`
  command (config-apply, queue-sync, reconcile, switchover)
  mailrelay-web.service        the GUI: status, maps, queue actions, switchover (a sync, the
                               VIP handover, the reconcile); under rootless Podman the same
                               unit name in the mailrelay user's own systemd. That user owns
                               its manager's cgroups, so there it gets only the web's verbs.
  the jobs                     what each job's code calls, nothing else
Anyone else is refused, with a message that says who it was taken for.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from app.agent import protocol as p
from app.messages import Message

QUEUE_ACTIONS = frozenset(p.QUEUE_ACTIONS)
RECONCILE = p.names(p.HOLD_ALL, p.DELETE_IDS, p.RELEASE_IDS, p.FLUSH_ALL)
APPLY = p.names(p.CHECK, p.APPLY)
# app/cluster/switchover.py: a sync, the handover, then the reconcile.
SWITCHOVER = p.names(p.QUEUE_SYNC, p.VIP_HANDOVER, p.VIP_HELD, p.STATUS) | RECONCILE
WEB = APPLY | QUEUE_ACTIONS | SWITCHOVER | p.names(p.QUEUE_LIST)
ADMIN = APPLY | SWITCHOVER
UNIT_VERBS: dict[str, frozenset[str]] = {
    "mailrelay-web.service": WEB,
    # app/cluster/pull.py applies the pulled version through app/postfix/pipeline.py.
    "mailrelay-config-pull.service": APPLY,
    # app/replication/queuesync.py: the sync, then a flush when the peer took nothing.
    "mailrelay-queue-sync.service": p.names(p.QUEUE_SYNC, p.FLUSH_ALL),
    # app/replication/promotion.py on MASTER, app/replication/reconcile.py after leaving it.
    "mailrelay-vrrp-events.service": RECONCILE | p.names(p.IMPORT_REPLICA),
    "mailrelay-reconcile.service": RECONCILE,
    # app/alerts/run.py: the node's status (app/cluster/status.py) and its oldest message.
    "mailrelay-alerts.service": p.names(p.STATUS, p.VIP_HELD, p.QUEUE_LIST),
}
_SYSTEM_UNIT = re.compile(r"/system\.slice/([a-z0-9-]+\.service)")
_USER_UNIT = re.compile(
    r"/user\.slice/user-(\d+)\.slice/user@\1\.service/(?:app\.slice/)?"
    r"(mailrelay-web\.service)(?:/.*)?"
)
_SESSION = re.compile(r"/user\.slice/user-\d+\.slice/session-[^/]+\.scope")


@dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int
    cgroup: str
    # What the caller was taken for (a unit name, "root", "administrator") or "" if unknown.
    role: str
    verbs: frozenset[str] | None  # None: every verb

    def may(self, verb: str) -> bool:
        return self.verbs is None or verb in self.verbs

    def __str__(self) -> str:
        return f"uid={self.uid},pid={self.pid},unit={self.role or self.cgroup or '?'}"


def cgroup_of(pid: int, proc: Path = Path("/proc")) -> str:
    """The cgroup path of a process as this process sees it: the unified hierarchy's, or the
    name=systemd one on hosts where that is where systemd keeps its units."""
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return ""
    paths = dict(line.split(":", 2)[1:] for line in lines if line.count(":") >= 2)
    unified = paths.get("", "")
    if unified and unified != "/":
        return unified
    return paths.get("name=systemd", unified)


def identify(pid: int, uid: int, gid: int) -> Caller:
    cgroup = cgroup_of(pid)
    if uid == 0:
        return Caller(pid, uid, gid, cgroup, "root", None)
    if match := _SYSTEM_UNIT.fullmatch(cgroup):
        unit = match.group(1)
        if unit in UNIT_VERBS:
            return Caller(pid, uid, gid, cgroup, unit, UNIT_VERBS[unit])
    if (match := _USER_UNIT.fullmatch(cgroup)) and int(match.group(1)) == uid:
        return Caller(pid, uid, gid, cgroup, f"{match.group(2)} (user {uid})", WEB)
    if _SESSION.fullmatch(cgroup) or cgroup.startswith("/.."):
        return Caller(pid, uid, gid, cgroup, "administrator", ADMIN)
    return Caller(pid, uid, gid, cgroup, "", frozenset())


def of_socket(sock: socket.socket) -> Caller:
    """The process at the other end of a connected unix socket, as the kernel reports it."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return identify(pid, uid, gid)


def refusal(caller: Caller, verb: str) -> str:
    if not caller.role:
        return Message(
            "refused: the agent does not know this caller ({caller}, cgroup {cgroup}); only "
            "root, the mailrelay units and an administrator's login session may use it",
            caller=str(caller),
            cgroup=caller.cgroup or "unknown",
        )
    return Message(
        "refused: {role} may not use the verb {verb} ({caller})",
        role=caller.role,
        verb=repr(verb),
        caller=str(caller),
    )
