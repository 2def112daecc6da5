"""The privileged half of queue sync: copy this node's Postfix queue into the peer's replica
directory with rsync over ssh, with Postfix frozen for the final pass.

Only mail state is copied (incoming active deferred hold, and the bounce/defer/trace logs);
never pid, private or public (sockets and FIFOs). The peer's `authorized_keys` entry runs
`rrsync` restricted to its replica directory, so this key can write nowhere else, and never into
the peer's live queue. See ../shared notes: postfix-ha.md.

Freeze modes:
  freeze  the cgroup v2 freezer of the Postfix service (SIGSTOP of the process tree when no
          freezer is found): the listening socket stays open, clients only see a late greeting.
          Under the freeze the queue is copied to a local snapshot (SYNC_SNAPSHOT_DIR; a copy
          taken while Postfix ran moved the bulk before), and the snapshot goes to the peer
          after the thaw: no network, ssh or peer in the frozen window.
  stop    `postfix stop` / copy / `postfix start`: the seed's way, kept for comparison (as
          `systemctl stop/start` of Postfix's unit when systemd runs it)
  none    copy while Postfix runs, for a lab only: a message that moves between queue
          directories while rsync lists them can be missing from that copy, and the peer
          then drops its shadow all the same
A thaw always follows, also when rsync fails or hangs; a watchdog thread thaws after the
deadline even if this thread is stuck. When the agent itself dies mid-copy (killed, crashed,
restarted), its unit's ExecStopPost runs `recover()` (`python -m app.agent thaw`), and so does
the next agent at start-up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.agent import snapshot
from app.agent.protocol import SyncAnswer
from app.messages import Message, encoded, message_of
from app.replication import sync_mark
from app.settings import SyncSettings

QUEUE_PARTS = ("incoming", "active", "deferred", "hold", "bounce", "defer", "trace")
FREEZE_MODES = ("freeze", "stop", "none")
# The mark of the last held pass (app/replication/sync_mark.py: the moment before Postfix was
# held, and the queue files not committed then). It goes to the peer's replica on its own,
# once the copy it describes is there in full (_ship_mark): the peer's shadow receiver drops
# the shadows it covers, which the replica now holds (or which left the queue).
SHADOW_MARKER = Path("/var/lib/mailrelay-agent") / sync_mark.NAME
CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
# How long the kernel may take to freeze Postfix's cgroup: a task in an uninterruptible wait
# (a hung disk) delays it. Not frozen by then, the run copies nothing.
FREEZE_CONFIRM_SECONDS = 5.0
# A copy under the freeze gets its timeout and this much more before a watchdog thaws Postfix.
WATCHDOG_MARGIN_SECONDS = 5.0
# Written before `postfix stop` in stop mode and removed after `postfix start`: if the agent dies
# in between, recover() knows that Postfix is down because of a sync, not because an operator
# stopped it. Under /run (the unit's RuntimeDirectory), so a reboot forgets it: at boot Postfix
# must wait for the return reconcile, not be started by the agent.
STOPPED_MARKER = Path("/run/mailrelay-agent/postfix-stopped-for-sync")


class SyncError(Exception):
    pass


@dataclass
class SyncConfig:
    peer: str
    ssh_key: Path
    remote_user: str = "mailrelay-sync"
    spool: Path = Path("/var/spool/postfix")
    # The peer's ssh host key, pinned by install-node from SYNC_PEER_HOST_KEY: never learnt
    # from the first connection, which anyone between the nodes could answer.
    known_hosts: Path = Path("/etc/mailrelay/sync_known_hosts")
    # A pass while Postfix runs may take minutes for a large queue (100,000 messages: over a
    # minute to the peer); a stuck one is caught sooner by rsync's own I/O timeout.
    timeout: float = 240.0
    io_timeout: int = 60
    # The frozen pass carries only what changed since the bulk pass; one that takes longer
    # than this has a stuck link or peer, and holding every SMTP client that long is worse
    # than a failed run (the next run, 5 s later, starts with a bulk pass again).
    frozen_timeout: float = 15.0
    bwlimit_kbps: int = 0
    # freeze mode's local snapshot of the queue (as large as the queue itself).
    staging: Path | None = None
    marker: Path = SHADOW_MARKER

    @classmethod
    def from_settings(cls, settings: SyncSettings) -> SyncConfig:
        if settings.peer is None:
            raise SyncError(
                Message("SYNC_PEER is not set: this node has no peer to copy its queue to")
            )
        return cls(
            peer=settings.peer,
            ssh_key=settings.ssh_key,
            remote_user=settings.remote_user,
            known_hosts=settings.known_hosts,
            staging=settings.snapshot_dir,
        )

    def check_pinned(self) -> None:
        """Refuse to talk to a peer whose host key is not pinned for its address."""
        try:
            lines = self.known_hosts.read_text().splitlines()
        except OSError as exc:
            raise SyncError(
                Message(
                    "the peer's ssh host key is not pinned ({path}: {error}): set "
                    "SYNC_PEER_HOST_KEY in the node's .env (the peer's "
                    "/etc/ssh/ssh_host_ed25519_key.pub) and run scripts/install-node again",
                    path=str(self.known_hosts),
                    error=exc.strerror or str(exc),
                )
            ) from None
        hosts = {part for line in lines if line.strip() for part in line.split()[0].split(",")}
        if self.peer not in hosts:
            raise SyncError(
                Message(
                    "{path} pins no host key for the peer {peer}: set SYNC_PEER_HOST_KEY in "
                    "the node's .env and run scripts/install-node again",
                    path=str(self.known_hosts),
                    peer=self.peer,
                )
            )


@dataclass
class SyncReport:
    mode: str
    ok: bool = False
    error: str = ""
    duration: float = 0.0
    freeze_seconds: float = 0.0
    files: int = 0
    bytes: int = 0
    passes: list[str] = field(default_factory=list)

    def as_dict(self) -> SyncAnswer:
        return {
            "mode": self.mode,
            "ok": self.ok,
            "error": encoded(self.error),
            "duration": self.duration,
            "freeze_seconds": self.freeze_seconds,
            "files": self.files,
            "bytes": self.bytes,
            "passes": list(self.passes),
        }


def postfix_cgroup() -> Path | None:
    """The cgroup v2 directory of the Postfix master process, if this host has one of its own.
    Never the agent's own cgroup (a Postfix started by hand from the agent would be in it):
    freezing that would freeze the agent, and its thaw, too."""
    try:
        pid = int(Path("/var/spool/postfix/pid/master.pid").read_text().split()[0])
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except (OSError, ValueError, IndexError):
        return None
    relative = _cgroup_of(lines)
    if relative is None or relative == _cgroup_of(_own_cgroup_lines()):
        return None
    for root in CGROUP_ROOTS:
        candidate = root / relative
        if (candidate / "cgroup.freeze").exists():
            return candidate
    return None


def _cgroup_of(lines: list[str]) -> str | None:
    return next((line[3:].lstrip("/") for line in lines if line.startswith("0::")), None)


def _own_cgroup_lines() -> list[str]:
    try:
        return Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []


def postfix_unit() -> str | None:
    """The systemd unit Postfix runs in (Debian: postfix@-.service), from its cgroup's name.
    Stop mode stops and starts that unit: a bare `postfix start` from the agent would put the
    new master into the agent's own cgroup, outside the unit that owns it."""
    cgroup = postfix_cgroup()
    if cgroup is None or not cgroup.name.endswith(".service"):
        return None
    return cgroup.name


def _postfix_pids() -> list[int]:
    """Postfix master and all its children (the SIGSTOP fallback)."""
    try:
        master = int(Path("/var/spool/postfix/pid/master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [master]
    children = subprocess.run(
        ["pgrep", "-P", str(master)], capture_output=True, text=True, check=False
    ).stdout.split()
    return pids + [int(p) for p in children]


_CONTROL: dict[str, Any] = {"capture_output": True, "check": True, "timeout": 60}


def _postfix_control(action: str, unit: str | None) -> list[str]:
    return ["systemctl", action, unit] if unit else ["postfix", action]


class Freezer:
    def __init__(self, mode: str, spool: Path = Path("/var/spool/postfix")) -> None:
        self.mode = mode
        self.spool = spool
        self.cgroup = postfix_cgroup() if mode == "freeze" else None
        self.unit = postfix_unit() if mode == "stop" else None
        self.stopped: list[int] = []
        self.frozen_at: float | None = None
        self.lock = threading.Lock()

    def freeze(self) -> None:
        with self.lock:
            self.frozen_at = time.monotonic()
            if self.mode == "stop":
                STOPPED_MARKER.write_text(f"{self.unit or ''}\n")
                subprocess.run(_postfix_control("stop", self.unit), **_CONTROL)
                # What `postfix quick-stop` does: the start skips postfix-script's integrity
                # checks, which look at every queue file (with 100,000 queued they once ran
                # past systemd's 90 s start limit in the lab); the queue was checked when
                # Postfix last started, and the copy only reads it.
                (self.spool / "quick-start").touch()
            elif self.mode == "freeze" and self.cgroup is not None:
                (self.cgroup / "cgroup.freeze").write_text("1")
                deadline = time.monotonic() + FREEZE_CONFIRM_SECONDS
                while "frozen 1" not in (self.cgroup / "cgroup.events").read_text():
                    if time.monotonic() > deadline:
                        # A copy of a queue that still moves is no snapshot: it could miss a
                        # message on its way from one directory to the next.
                        raise SyncError(
                            Message(
                                "Postfix's cgroup was not frozen within {seconds:g} s",
                                seconds=FREEZE_CONFIRM_SECONDS,
                            )
                        )
                    time.sleep(0.005)
            elif self.mode == "freeze":
                self.stopped = _postfix_pids()
                for pid in self.stopped:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                _wait_until_stopped(self.stopped)

    def thaw(self) -> float:
        """Undo the freeze (idempotent); the seconds Postfix was frozen."""
        with self.lock:
            if self.frozen_at is None:
                return 0.0
            if self.mode == "stop" and (problem := _start_postfix(self.unit)):
                # A start that fails or hangs is an error of this sync, not of the agent.
                self.frozen_at = None
                raise SyncError(problem)
            if self.cgroup is not None:
                (self.cgroup / "cgroup.freeze").write_text("0")
            for pid in self.stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            frozen = time.monotonic() - self.frozen_at
            self.frozen_at, self.stopped = None, []
            return frozen


def _wait_until_stopped(pids: list[int]) -> None:
    """A SIGSTOP takes effect when the process next leaves the kernel: one in a disk wait may
    still rename a queue file. The walk under the freeze must not begin before every process
    has stopped (or is gone)."""
    deadline = time.monotonic() + FREEZE_CONFIRM_SECONDS
    waiting = list(pids)
    while waiting:
        waiting = [pid for pid in waiting if _process_state(pid) not in ("T", "t", "X", "Z", "")]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise SyncError(
                Message(
                    "Postfix's processes {pids} did not stop within {seconds:g} s",
                    pids=" ".join(map(str, waiting)),
                    seconds=FREEZE_CONFIRM_SECONDS,
                )
            )
        time.sleep(0.002)


def _process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat ("" when the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


def _start_postfix(unit: str | None) -> str | None:
    """Start Postfix after a stop-mode copy; what went wrong, or None. The marker goes only
    when Postfix is up again, so the agent's next start (or its ExecStopPost) tries again."""
    command = _postfix_control("start", unit)
    try:
        started = subprocess.run(command, text=True, **_CONTROL | {"check": False})
    except subprocess.TimeoutExpired:
        return Message(
            "{command} did not finish in {seconds} s",
            command=" ".join(command),
            seconds=_CONTROL["timeout"],
        )
    if started.returncode != 0:
        output = (started.stderr or started.stdout).strip()[-400:]
        return Message(
            "{command} failed ({code}): {output}",
            command=" ".join(command),
            code=started.returncode,
            output=output,
        )
    STOPPED_MARKER.unlink(missing_ok=True)
    return None


def recover() -> list[str]:
    """Undo whatever a sync that died mid-copy left behind: thaw Postfix's cgroup, continue its
    processes (the SIGSTOP fallback) and start Postfix if a stop-mode sync stopped it. Safe to
    run any time: nothing else in the product freezes Postfix. What it did, for the log."""
    done = []
    cgroup = postfix_cgroup()
    if cgroup is not None and (cgroup / "cgroup.freeze").read_text().strip() == "1":
        (cgroup / "cgroup.freeze").write_text("0")
        done.append(f"thawed {cgroup}")
    for pid in _postfix_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    if STOPPED_MARKER.exists():
        unit = STOPPED_MARKER.read_text().strip() or None
        done.append(_start_postfix(unit) or f"started Postfix ({unit or 'postfix start'})")
    return done


_STATS = {
    "files": re.compile(r"Number of regular files transferred: ([\d,]+)"),
    "bytes": re.compile(r"Total transferred file size: ([\d,]+)"),
}


def _ssh(config: SyncConfig) -> str:
    # Only the pinned key counts: no learning on first use, no global known_hosts, no updates.
    return (
        f"ssh -i {config.ssh_key} -o BatchMode=yes -o ConnectTimeout=5 "
        f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={config.known_hosts} "
        "-o GlobalKnownHostsFile=/dev/null -o UpdateHostKeys=no"
    )


def _rsync(
    config: SyncConfig,
    source: Path,
    timeout: float,
    local: Path | None = None,
    delete: bool = True,
) -> Stats:
    """Copy the queue parts under `source` to the peer's replica, or to the local directory
    `local`. To the peer, new files are put in place and old ones deleted only at the end
    (--delay-updates --delete-after): a copy that fails half-way leaves the replica as it was,
    not a mix in which a message that moved between queue directories is in neither. Without
    `delete` nothing is deleted: a copy taken while Postfix runs can miss a file that moved
    while rsync listed the queue, and must not delete the replica's copy of it too."""
    sources = [str(source / part) for part in QUEUE_PARTS if (source / part).exists()]
    io_timeout = max(5, min(config.io_timeout, int(timeout)))
    command = ["rsync", "-rlptH", "--stats", f"--timeout={io_timeout}"]
    if local is not None:
        command += ["--delete", *sources, f"{local}/"]
        where = str(local)
    else:
        command += ["--delay-updates", *(["--delete-after"] if delete else []), "-e", _ssh(config)]
        command += [*sources, f"{config.remote_user}@{config.peer}:/"]
        if config.bwlimit_kbps:
            command.insert(1, f"--bwlimit={config.bwlimit_kbps}")
        where = config.peer
    # 24: files vanished during the copy (Postfix moved them): the next run copies them.
    result = _run_rsync(command, where, timeout, (0, 24))
    numbers = {
        k: int(m.group(1).replace(",", "")) if (m := r.search(result.stdout)) else 0
        for k, r in _STATS.items()
    }
    return numbers["files"], numbers["bytes"]


Stats = tuple[int, int]  # files, bytes


def sync(config: SyncConfig, mode: str) -> SyncReport:
    if mode not in FREEZE_MODES:
        raise SyncError(
            Message("freeze mode must be one of {modes}", modes=", ".join(FREEZE_MODES))
        )
    report = SyncReport(mode)
    started = time.monotonic()
    freezer = Freezer(mode, config.spool)
    try:
        # A mark of an earlier run that failed describes no copy the peer has.
        config.marker.unlink(missing_ok=True)
        config.check_pinned()
        if mode == "freeze" and config.staging is not None:
            report.files, report.bytes = _snapshot_and_ship(config, freezer, report)
        else:
            report.files, report.bytes = _copy_while_held(config, freezer, report)
        report.ok = True
    except (SyncError, OSError, subprocess.SubprocessError) as exc:
        report.freeze_seconds = report.freeze_seconds or freezer.thaw()
        report.error = message_of(exc)
    report.duration = time.monotonic() - started
    return report


def _held(
    config: SyncConfig,
    freezer: Freezer,
    report: SyncReport,
    timeout: float,
    copy: Callable[[], Stats],
) -> Stats:
    """Run `copy` with Postfix frozen (or stopped); the thaw follows whatever happens, and a
    watchdog thaws even if this thread hangs."""
    freezer.freeze()
    thawed_early = threading.Event()

    def thaw_in_time() -> None:
        thawed_early.set()
        freezer.thaw()

    watchdog = threading.Timer(timeout + WATCHDOG_MARGIN_SECONDS, thaw_in_time)
    watchdog.daemon = True
    watchdog.start()
    try:
        stats = copy()
    finally:
        watchdog.cancel()
        report.freeze_seconds = freezer.thaw()
    if thawed_early.is_set():
        # Postfix ran again before the copy ended: what it copied after that is no snapshot.
        raise SyncError(
            Message(
                "the copy under the freeze took longer than {seconds:g} s and Postfix was "
                "thawed before it ended; this run's copy is not used",
                seconds=timeout + WATCHDOG_MARGIN_SECONDS,
            )
        )
    return stats


def _snapshot_and_ship(config: SyncConfig, freezer: Freezer, report: SyncReport) -> Stats:
    """freeze mode: take_snapshot, then ship that consistent snapshot (and its mark) to the
    peer after the thaw."""
    take_snapshot(config, freezer, report)
    assert config.staging is not None
    stats = _rsync(config, config.staging, config.timeout)
    report.passes.append("ship")
    _ship_mark(config)
    return stats


def take_snapshot(config: SyncConfig, freezer: Freezer, report: SyncReport) -> None:
    """A local copy while Postfix runs (the bulk, by rsync), a catch-up with what Postfix
    moved meanwhile, then under the freeze only what moved during the catch-up
    (app.agent.snapshot: one walk of the queue, no network and no peer in the frozen window);
    and the snapshot's mark for the peer's shadow receiver."""
    staging = config.staging
    assert staging is not None
    staging.mkdir(mode=0o700, exist_ok=True)
    before = snapshot.record(config.spool, QUEUE_PARTS)
    _rsync(config, config.spool, config.timeout, local=staging)
    report.passes.append("bulk-local")
    caught_up = snapshot.update(config.spool, staging, before, QUEUE_PARTS)
    report.passes.append("catch-up-local")
    frozen: list[snapshot.Pass] = []

    def frozen_pass() -> Stats:
        frozen.append(snapshot.update(config.spool, staging, caught_up.seen, QUEUE_PARTS))
        return frozen[0].files, frozen[0].bytes

    began = sync_mark.Moment.now()
    _held(config, freezer, report, config.frozen_timeout, frozen_pass)
    report.passes.append("frozen-local")
    # From the frozen walk: what cleanup had not committed while Postfix stood still.
    sync_mark.write(config.marker, sync_mark.SyncMark(began, snapshot.uncommitted(frozen[0].seen)))


def _copy_while_held(config: SyncConfig, freezer: Freezer, report: SyncReport) -> Stats:
    """stop mode (the seed's way) and none: copy to the peer directly; in stop mode an unfrozen
    first pass moves the bulk, so Postfix is down only for the deltas."""
    held = freezer.mode != "none"
    if held:
        _rsync(config, config.spool, config.timeout, delete=False)
        report.passes.append("bulk")
    timeout = config.frozen_timeout if held else config.timeout
    began = sync_mark.Moment.now()

    def held_copy() -> Stats:
        # Listed before the copy: a file committed after this is either in the copy or here.
        pending = snapshot.uncommitted(snapshot.record(config.spool, snapshot.MESSAGE_PARTS))
        sync_mark.write(config.marker, sync_mark.SyncMark(began, pending))
        return _rsync(config, config.spool, timeout)

    stats = _held(config, freezer, report, timeout, held_copy)
    report.passes.append("held" if held else "live")
    _ship_mark(config)
    return stats


def _ship_mark(config: SyncConfig) -> None:
    """The mark of the copy that just reached the peer in full, in a copy of its own: shipped
    with the queue, --delay-updates would put it in place before the queue files it speaks
    for (rsync renames a directory's files before its subdirectories')."""
    io_timeout = max(5, min(config.io_timeout, int(config.timeout)))
    command = ["rsync", "-pt", f"--timeout={io_timeout}", "-e", _ssh(config)]
    command += [str(config.marker), f"{config.remote_user}@{config.peer}:/"]
    _run_rsync(command, config.peer, config.timeout)


def _run_rsync(
    command: list[str], where: str, timeout: float, fine: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise SyncError(
            Message("rsync to {peer} took longer than {seconds:.0f} s", peer=where, seconds=timeout)
        ) from None
    if result.returncode not in fine:
        # rsync's and ssh's own English, quoted as it is in a sentence of ours.
        raise SyncError(
            Message(
                "rsync to {peer} failed ({code}): {output}",
                peer=where,
                code=result.returncode,
                output=(result.stderr or result.stdout).strip()[-400:],
            )
        )
    return result


def _ids(spool: Path, parts: tuple[str, ...]) -> set[str]:
    ids: set[str] = set()
    for part in parts:
        for _dir, _subdirs, files in os.walk(spool / part):
            ids.update(files)
    return ids


def hold_all(spool: Path = Path("/var/spool/postfix")) -> list[str]:
    """Put every message of incoming, active and deferred on hold (a returning node, before it
    delivers anything); the IDs that were held. Works whether Postfix runs or not."""
    ids = sorted(_ids(spool, ("incoming", "active", "deferred")))
    postsuper_ids("-h", ids)
    return ids


SCRATCH_CONFIG = Path("/var/lib/mailrelay-agent/postsuper-config")


def _postsuper_config() -> Path:
    """A copy of Postfix's configuration that does not log to maillog_file. A returning node
    holds its queue before Postfix (and its log daemon) starts; postsuper would then open
    maillog_file itself after dropping to the postfix user, which may not write it (nor the
    agent's stdout). The agent logs every call and its outcome instead."""
    SCRATCH_CONFIG.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in ("main.cf", "master.cf"):
        shutil.copy2(Path("/etc/postfix") / name, SCRATCH_CONFIG / name)
    subprocess.run(
        [
            "postconf",
            "-c",
            str(SCRATCH_CONFIG),
            "-e",
            "maillog_file_prefixes=/dev/null",
            "maillog_file=/dev/null",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return SCRATCH_CONFIG


def postsuper_ids(flag: str, ids: list[str]) -> int:
    """postsuper -h/-H/-d/-r for exactly these queue IDs (read from stdin); how many were
    given."""
    if flag not in ("-h", "-H", "-d", "-r"):
        raise SyncError(Message("postsuper {flag} is not one of ours", flag=flag))
    if ids:
        result = subprocess.run(
            ["postsuper", "-c", str(_postsuper_config()), flag, "-"],
            input="\n".join(ids) + "\n",
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise SyncError(
                Message(
                    "postsuper {flag} failed: {output}", flag=flag, output=result.stderr.strip()
                )
            )
    return len(ids)
