"""Take over the peer's queue copy (the replica) into this node's live queue, treating every
file in it as untrusted input.

The peer writes the replica over ssh (rrsync, write-only, links munged), so a compromised peer
or a stolen sync key decides what is in it: symlinks, FIFOs, hard links, huge files, mail with
any sender. Here nothing is followed: every directory is opened relative to its parent with
O_NOFOLLOW | O_DIRECTORY, every file with O_NOFOLLOW | O_NONBLOCK and checked on its open
descriptor (a regular file, one link, owned by the replica's owner, within the size cap);
only the known queue directories and their one-character hash subdirectories are entered;
the envelope sender must be in a sender domain of the applied configuration. A file passes
all of that, is copied, and only then is its name in the replica removed. Whatever is refused
stays where it is, is logged and counted in the report.

Each accepted file goes to hold/ first (a name already in the live queue is skipped, never
overwritten), then `postsuper -r` requeues it through pickup, which gives it a new queue ID
and drops the recipients already delivered. A replica file is removed only after the requeue,
so an import that stopped half-way is finished by the next one; the takeover's journal
(app/agent/takeover_journal.py) names the files an earlier try requeued already, which are
only removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.agent import queuefile
from app.agent.protocol import ImportAnswer, Refusal
from app.durable import write_all

log = logging.getLogger("mailrelay.agent.replica")

REPLICA = Path("/var/spool/mailrelay-replica")
IMPORT_PARTS = ("incoming", "active", "deferred", "hold")
QUEUE_NAME = re.compile(r"[0-9A-Za-z]{6,32}")
# Postfix's hashed queue subdirectories: one character per level (hash_queue_depth).
HASH_DIR = re.compile(r"[0-9A-Za-z]")
MAX_HASH_DEPTH = 2
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ReplicaError(Exception):
    """The replica cannot be imported at all (its directory is not one)."""


# A queue file holds the message plus its envelope: one record per recipient, done or not.
HEADROOM = 4 * 1024 * 1024
# Postfix's message_size_limit = 0 means no limit; the import keeps one.
NO_LIMIT_CAP = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int
    max_files: int

    @classmethod
    def of(cls, max_file_bytes: int | None, max_files: int, message_size_limit: int) -> Limits:
        """REPLICA_MAX_FILE_BYTES and REPLICA_MAX_FILES (app.settings.AgentSettings); an unset
        file cap is Postfix's message_size_limit plus HEADROOM."""
        if max_file_bytes is None:
            max_file_bytes = (
                message_size_limit + HEADROOM if message_size_limit > 0 else NO_LIMIT_CAP
            )
        return cls(max_file_bytes, max_files)


# A replica full of junk must not make the answer (and the log) as large: the first ones are
# listed, all are counted.
MAX_REPORTED = 1000


@dataclass
class Report:
    imported: list[str] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    refused_total: int = 0
    incomplete: int = 0
    # The queue IDs of the files that passed every check, imported now or in the live queue
    # already: the messages no shadow copy needs to bring. A file skipped as incomplete (mail
    # in flight when the sync froze the queue, or rsync's staging directory) or refused covers
    # nothing; its shadow, if there is one, is the message's only copy.
    covered: set[str] = field(default_factory=set)
    # Why an import stopped before its end (the shadows' import: a sendmail that failed); what
    # it took before is in `imported` all the same.
    error: str = ""

    def refuse(self, where: str, reason: str) -> None:
        self.refused_total += 1
        if self.refused_total <= MAX_REPORTED:
            log.warning("replica import refused %s: %s (left in the replica)", where, reason)
            self.refused.append({"path": where, "reason": reason})

    def as_dict(self) -> ImportAnswer:
        return {
            "imported": self.imported,
            "refused": self.refused,
            "refused_total": self.refused_total,
            "incomplete": self.incomplete,
        }


@dataclass
class _Accepted:
    directory: int  # descriptor of the replica directory holding the file
    name: str


def _open_dir(name: str, parent: int) -> int | None:
    """A subdirectory opened without following a link; None when it is missing."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None


def _entries(directory: int) -> Iterator[os.DirEntry[str]]:
    # scandir on a descriptor (it reads a duplicate) lists that directory, wherever its name
    # points now.
    with os.scandir(directory) as entries:
        yield from entries


class _Walk:
    """One import: the open descriptors, the report and what was accepted."""

    def __init__(
        self,
        replica: int,
        hold: int,
        limits: Limits,
        allowed: frozenset[str],
        taken_before: frozenset[str],
    ) -> None:
        self.replica = replica
        self.owner = os.fstat(replica).st_uid
        self.hold = hold
        self.limits = limits
        self.allowed = allowed
        self.postfix = pwd.getpwnam("postfix")
        self.report = Report()
        self.accepted: list[_Accepted] = []
        # Queue IDs this node has already: in its live queue (skipped, never overwritten) or
        # on hold (put there by an import that stopped half-way, or just now).
        self.live: set[str] = set()
        self.held: set[str] = set()
        self.written: set[str] = set()  # put on hold by this import
        # Requeued by an earlier try of this takeover (app/agent/takeover_journal.py), which
        # stopped before it removed them here: removed now, never queued a second time.
        self.taken_before = taken_before
        self.requeued_before: set[str] = set()
        self.seen = 0
        self.descriptors: list[int] = []

    def part(self, part: str) -> None:
        try:
            fd = _open_dir(part, self.replica)
        except OSError as exc:
            self.report.refuse(part, f"not a directory ({exc.strerror})")
            return
        if fd is not None:
            self.directory(fd, part, 0)

    def directory(self, fd: int, where: str, depth: int) -> None:
        """Walk an opened directory; it stays open while a file in it waits to be removed."""
        before = len(self.accepted)
        try:
            self._directory(fd, where, depth)
        finally:
            if any(a.directory == fd for a in self.accepted[before:]):
                self.descriptors.append(fd)
            else:
                os.close(fd)

    def _directory(self, fd: int, where: str, depth: int) -> None:
        for entry in _entries(fd):
            path = f"{where}/{entry.name}"
            if entry.name.startswith("."):
                # rsync's --delay-updates staging (.~tmp~) of a copy that failed half-way:
                # its files belong to a state the replica never reached.
                continue
            if entry.is_dir(follow_symlinks=False):
                if depth >= MAX_HASH_DEPTH or not HASH_DIR.fullmatch(entry.name):
                    self.report.refuse(path, "not a queue hash directory")
                    continue
                try:
                    sub = _open_dir(entry.name, fd)
                except OSError as exc:
                    self.report.refuse(path, f"cannot open ({exc.strerror})")
                    continue
                if sub is not None:
                    self.directory(sub, path, depth + 1)
                continue
            self.seen += 1
            if self.seen > self.limits.max_files:
                if self.seen == self.limits.max_files + 1:
                    self.report.refuse(
                        where, f"more than {self.limits.max_files} files: the rest is not read"
                    )
                continue
            self.file(fd, entry.name, path)

    def file(self, directory: int, name: str, path: str) -> None:
        if not QUEUE_NAME.fullmatch(name):
            self.report.refuse(path, "not a queue file name")
            return
        if name in self.taken_before and name not in self.held:
            self.requeued_before.add(name)
            self.accepted.append(_Accepted(directory, name))
            return
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=directory)
        except FileNotFoundError:
            return
        except OSError as exc:
            # ELOOP: a symlink; nothing it points to is read or removed.
            self.report.refuse(path, f"cannot open without following links ({exc.strerror})")
            return
        try:
            st = os.fstat(fd)
            problem = self._problem(st)
            if problem:
                self.report.refuse(path, problem)
                return
            # cleanup makes a queue file 0700 only once it is complete: skip half-written ones.
            if stat.S_IMODE(st.st_mode) != 0o700:
                self.report.incomplete += 1
                return
            data = _read(fd, self.limits.max_file_bytes)
        finally:
            os.close(fd)
        if data is None:
            self.report.refuse(path, f"larger than {self.limits.max_file_bytes} bytes")
            return
        try:
            sender = queuefile.envelope_sender(data)
        except queuefile.QueueFileError as exc:
            self.report.refuse(path, f"not a queue file: {exc}")
            return
        domain = queuefile.sender_domain(sender)
        if domain is None or domain not in self.allowed:
            self.report.refuse(
                path, f"sender <{sender[:200]}> is not in an allowed sender domain of this node"
            )
            return
        if name in self.held and name not in self.written and not self._same_held(name, data):
            # Not what an import that stopped half-way left there: this node's own message,
            # held by the operator, which `postsuper -r` would release.
            self.report.refuse(path, "a different message of this name is on hold here")
            return
        if name not in self.live and name not in self.held:
            _write_held(self.hold, name, data, st, self.postfix)
            self.held.add(name)
            self.written.add(name)
        self.accepted.append(_Accepted(directory, name))

    def _same_held(self, name: str, data: bytes) -> bool:
        """Whether hold/NAME holds exactly `data`, as the import that wrote it left it."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.hold)
        except OSError:
            return False
        try:
            return _read(fd, len(data)) == data
        finally:
            os.close(fd)

    def _problem(self, st: os.stat_result) -> str | None:
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_nlink != 1:
            return f"has {st.st_nlink} hard links"
        if st.st_uid != self.owner:
            return f"owned by uid {st.st_uid}, not by the replica's owner {self.owner}"
        if st.st_size > self.limits.max_file_bytes:
            return f"larger than {self.limits.max_file_bytes} bytes"
        return None


def _read(fd: int, limit: int) -> bytes | None:
    """The whole file, or None if it holds more than `limit` bytes (it may grow after the
    stat)."""
    chunks, size = [], 0
    while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)


def allowed_domains(sender_access: Path) -> frozenset[str]:
    """The sender domains of the applied configuration, from the live sender_access map the
    agent installed itself (never from what a caller says)."""
    domains = set()
    try:
        text = sender_access.read_text(encoding="ascii")
    except FileNotFoundError:  # nothing applied yet: no sender may relay
        return frozenset()
    for line in text.splitlines():
        key, tab, value = line.partition("\t")
        if line.startswith("#") or not tab:
            continue
        if value == "OK":
            domains.add(key.lower())
    return frozenset(domains)


def _queue_names(spool: Path, parts: tuple[str, ...]) -> set[str]:
    names: set[str] = set()
    for part in parts:
        for _dir, _subdirs, files in os.walk(spool / part):
            names.update(files)
    return names


def _write_held(
    hold: int, name: str, data: bytes, st: os.stat_result, owner: pwd.struct_passwd
) -> None:
    """hold/NAME with the file's content, mode 0700 and mtime, owned by Postfix, written
    under a dot name and renamed into place."""
    tmp = f".{name}.import"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=hold)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=hold)
    try:
        write_all(fd, data)
        os.fchown(fd, owner.pw_uid, owner.pw_gid)
        os.fchmod(fd, 0o700)
        # A deferred file's mtime is its next retry time.
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=hold, dst_dir_fd=hold)


def import_replica(
    replica: Path,
    spool: Path,
    limits: Limits,
    allowed: frozenset[str],
    requeue: Callable[[list[str]], object],
    taken_before: frozenset[str] = frozenset(),
    write_down: Callable[[list[str]], object] = lambda ids: None,
) -> Report:
    """Import what passes every check; `requeue(ids)` is `postsuper -r` for those IDs.
    `taken_before`: what earlier tries of this takeover took; `write_down(ids)` records the
    IDs about to be requeued, durably, before they are."""
    try:
        root = os.open(replica, _DIR_FLAGS)
    except FileNotFoundError:
        return Report()
    except OSError as exc:
        raise ReplicaError(f"{replica} is not a directory ({exc.strerror})") from None
    hold = os.open(spool / "hold", _DIR_FLAGS)
    walk = _Walk(root, hold, limits, allowed, taken_before)
    walk.live = _queue_names(spool, ("incoming", "active", "deferred"))
    walk.held = _queue_names(spool, ("hold",))
    try:
        for part in IMPORT_PARTS:
            walk.part(part)
        walk.report.covered = {a.name for a in walk.accepted}
        walk.report.imported = sorted(walk.report.covered - walk.live - walk.requeued_before)
        # Written down first: a try that stops after the requeue must not requeue them again.
        write_down(walk.report.imported)
        requeue(walk.report.imported)
        # Only now, checked, copied and requeued: the names in the replica go.
        for accepted in walk.accepted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(accepted.name, dir_fd=accepted.directory)
    finally:
        for fd in (*walk.descriptors, hold, root):
            os.close(fd)
    log.info(
        "replica import: %d imported, %d refused (left in %s), %d incomplete",
        len(walk.report.imported),
        walk.report.refused_total,
        replica,
        walk.report.incomplete,
    )
    return walk.report
