"""The shadow store: the peer's not-yet-replicated messages, appended to segment files, bounded.

A segment is a run of records, each a fixed header (magic, CRC-32 of what follows, the lengths
of the envelope and of the message), the envelope as JSON and the message
exactly as the peer's Postfix received it. Messages stored at the same moment share one
fdatasync of the segment (group commit); a new segment is made durable in its directory before
a record in it is acknowledged: once `put` returns, a power cut keeps the message.

One file per message cost the receiver about 0.8 ms of CPU per message, mostly in the kernel
(create, fsync, rename and the directory's fsync), against about 0.07 ms for an append to a
segment (measured, README). A segment is closed after SEGMENT_SECONDS or SEGMENT_BYTES and
dropped whole once the last sync's snapshot covers every record in it; the promotion import
skips the covered records of a segment that is still there (app/replication/sync_mark.py).

An envelope carries the moment of end-of-data on the peer's clocks (wall and monotonic), the
clocks of the snapshot's moment that a sync's mark carries.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.durable import fsync_directory
from app.replication.sync_mark import BOOT_ID, QUEUE_ID, Coverage, Moment, finite

SEGMENT_NAME = re.compile(r"segment-[0-9]{20}-[0-9a-f]{8}")
# A segment the promotion import refused something in: kept for the operator, never read again.
REFUSED_PREFIX = "refused-"
# magic, CRC-32 of envelope and message, envelope length, message length
HEADER = struct.Struct(">4sIII")
MAGIC = b"MRS2"
# An envelope longer than this is not one we wrote (a thousand recipients fit easily).
MAX_ENVELOPE_BYTES = 1024 * 1024
SEGMENT_SECONDS = 1.0
SEGMENT_BYTES = 16 * 1024 * 1024
# Opening a segment to read it: never through a link, never blocking on a FIFO.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class StoreFull(Exception):
    """Storing this message would pass SHADOW_STORE_MAX_BYTES."""


class ShadowFormatError(Exception):
    """Not a shadow record or envelope (the peer's data is untrusted)."""


RET = ("FULL", "HDRS")
BODY = ("7BIT", "8BITMIME")
NOTIFY = re.compile(r"NEVER|(SUCCESS|FAILURE|DELAY)(,(SUCCESS|FAILURE|DELAY))*")
# RFC 3461: printable US-ASCII, and Postfix takes at most 100 characters.
ENVID = re.compile(r"[\x20-\x7e]{1,100}")
_XTEXT_ESCAPE = re.compile(r"\+([0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class Requests:
    """What the client asked with MAIL FROM and each RCPT TO about delivery status
    notifications (RFC 3461) and the body (RFC 6152, RFC 6531). Postfix keeps them in its queue
    file; a message the peer takes over must be delivered, and reported on, as the old node
    would have: without them it would, say, bounce to a sender who asked for NOTIFY=NEVER."""

    ret: str = ""  # FULL or HDRS: what a bounce returns of the message
    envid: str = ""  # the client's ID for the transaction, decoded from xtext
    notify: tuple[str, ...] = ()  # per recipient, "" where it asked nothing
    body: str = ""  # 7BIT or 8BITMIME
    smtputf8: bool = False

    @classmethod
    def from_esmtp(cls, mail: list[str], rcpts: list[list[str]]) -> Requests:
        """From the ESMTP parameters as the client gave them (Postfix checked their syntax)."""
        if not any(rcpts) and all(p[:5].upper() == "SIZE=" for p in mail):
            return NO_REQUESTS  # most clients: a shadow then carries none
        given = {key.upper(): value for key, _, value in (p.partition("=") for p in mail)}
        notify = []
        for params in rcpts:
            asked = [v for k, _, v in (p.partition("=") for p in params) if k.upper() == "NOTIFY"]
            notify.append(asked[0].upper() if asked else "")
        return cls(
            ret=given.get("RET", "").upper(),
            envid=_XTEXT_ESCAPE.sub(lambda m: chr(int(m[1], 16)), given.get("ENVID", "")),
            notify=tuple(notify) if any(notify) else (),
            body=given.get("BODY", "").upper(),
            smtputf8="SMTPUTF8" in given,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ret": self.ret, "envid": self.envid, "notify": list(self.notify),
            "body": self.body, "smtputf8": self.smtputf8,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, raw: object, recipients: int) -> Requests:
        if not isinstance(raw, dict):
            raise ShadowFormatError("the ESMTP requests are not a JSON object")
        ret, envid, body = raw.get("ret", ""), raw.get("envid", ""), raw.get("body", "")
        notify, smtputf8 = raw.get("notify", []), raw.get("smtputf8", False)
        if ret not in ("", *RET) or body not in ("", *BODY):
            raise ShadowFormatError("RET or BODY is not one Postfix takes")
        if not isinstance(envid, str) or (envid and not ENVID.fullmatch(envid)):
            raise ShadowFormatError("ENVID is not printable text of at most 100 characters")
        if (
            not isinstance(notify, list)
            or len(notify) not in (0, recipients)
            or not all(isinstance(n, str) and (not n or NOTIFY.fullmatch(n)) for n in notify)
        ):
            raise ShadowFormatError("NOTIFY is not one valid request per recipient")
        if not isinstance(smtputf8, bool):
            raise ShadowFormatError("SMTPUTF8 is not true or false")
        return cls(ret, envid, tuple(notify), body, smtputf8)


NO_REQUESTS = Requests()


@dataclass(frozen=True)
class Envelope:
    queue_id: str
    sender: str
    recipients: list[str]
    client_address: str
    time: float  # end-of-data, the peer's wall clock
    requests: Requests = NO_REQUESTS
    # The same moment on the peer's monotonic clock, and the boot it counts from ("" and None
    # in a shadow of an earlier release).
    boot: str = ""
    mono: float | None = None

    @property
    def moment(self) -> Moment:
        return Moment(self.time, self.boot, self.mono)

    def as_dict(self) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "queue_id": self.queue_id,
            "sender": self.sender,
            "recipients": self.recipients,
            "client_address": self.client_address,
            "time": self.time,
        }
        if self.requests != NO_REQUESTS:
            envelope["requests"] = self.requests.as_dict()
        if self.boot:
            envelope |= {"boot": self.boot, "mono": self.mono}
        return envelope

    @classmethod
    def from_dict(cls, raw: object) -> Envelope:
        if not isinstance(raw, dict):
            raise ShadowFormatError("the envelope is not a JSON object")
        queue_id, sender, rcpts = raw.get("queue_id"), raw.get("sender"), raw.get("recipients")
        client, when = raw.get("client_address", ""), raw.get("time")
        if not isinstance(queue_id, str) or not QUEUE_ID.fullmatch(queue_id):
            raise ShadowFormatError(f"not a queue ID: {str(queue_id)[:40]!r}")
        if not isinstance(sender, str) or any(c in sender for c in "\r\n\0"):
            raise ShadowFormatError("the sender is not an address")
        if (
            not isinstance(rcpts, list)
            or not rcpts
            or not all(isinstance(r, str) and r and not set(r) & set("\r\n\0") for r in rcpts)
        ):
            raise ShadowFormatError("the recipients are not a list of addresses")
        if not isinstance(client, str) or not isinstance(when, int | float):
            raise ShadowFormatError("the client address or time is malformed")
        wall = finite(when)
        if wall is None:
            raise ShadowFormatError("the time is not a finite number")
        boot, mono = raw.get("boot", ""), None
        if boot != "":
            if not isinstance(boot, str) or not BOOT_ID.fullmatch(boot):
                raise ShadowFormatError("the boot ID is not one the kernel gives")
            mono = finite(raw.get("mono"))
            if mono is None:
                raise ShadowFormatError("the monotonic time is not a finite number")
        # None written: the client asked none (or the shadow is of an earlier release).
        given = raw.get("requests")
        requests = NO_REQUESTS if given is None else Requests.from_dict(given, len(rcpts))
        return cls(queue_id, sender, list(rcpts), client, wall, requests, boot, mono)


def encode(envelope: Envelope, message: bytes) -> bytes:
    """One record, as a segment holds it."""
    head = json.dumps(envelope.as_dict()).encode()
    crc = zlib.crc32(message, zlib.crc32(head))
    return HEADER.pack(MAGIC, crc, len(head), len(message)) + head + message


@dataclass(frozen=True)
class Record:
    """A record read back: its envelope and message, or why it cannot be used. `message` is
    None when the message was not read (larger than the reader's cap, or not asked for)."""

    envelope: Envelope | None
    message: bytes | None
    problem: str = ""


def records(fd: int, max_message_bytes: int, with_messages: bool = True) -> Iterator[Record]:
    """The records of an open segment, from its start, read as untrusted input. A record whose
    framing is broken (a write a crash cut short, or not one we wrote) ends the segment:
    nothing after it can be found again."""
    offset = 0
    end = os.fstat(fd).st_size
    while True:
        header = os.pread(fd, HEADER.size, offset)
        if not header:
            return
        if len(header) < HEADER.size:
            yield Record(None, None, "a record cut short at its header")
            return
        magic, crc, head_size, size = HEADER.unpack(header)
        if magic != MAGIC or head_size > MAX_ENVELOPE_BYTES:
            yield Record(None, None, f"no shadow record at byte {offset}")
            return
        start = offset + HEADER.size
        offset = start + head_size + size
        if offset > end:
            yield Record(None, None, "a record cut short")
            return
        if size > max_message_bytes:
            yield Record(None, None, f"a message larger than {max_message_bytes} bytes")
            continue
        body = os.pread(fd, head_size + (size if with_messages else 0), start)
        if with_messages and zlib.crc32(body) != crc:
            yield Record(None, None, f"the record at byte {start - HEADER.size} is damaged")
            return
        try:
            envelope = Envelope.from_dict(json.loads(body[:head_size]))
        except (ValueError, RecursionError, ShadowFormatError) as exc:
            yield Record(None, None, str(exc))
            continue
        yield Record(envelope, body[head_size:] if with_messages else None)


def is_segment(name: str) -> bool:
    return SEGMENT_NAME.fullmatch(name) is not None


def stored(root: Path) -> tuple[int, int]:
    """The shadows in the store and its size in bytes, refused segments included (none when
    it does not exist): for the node's status. Reads only the records' headers."""
    count = size = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root):
            name = entry.name.removeprefix(REFUSED_PREFIX)
            if not is_segment(name):
                continue
            try:
                fd = os.open(entry.path, READ_FLAGS)
            except OSError:
                continue  # dropped meanwhile, or not a file to follow
            try:
                size += os.fstat(fd).st_size
                count += _summary(fd).count
            finally:
                os.close(fd)
    return count, size


@dataclass
class _Summary:
    """The shadows of a segment as far as pruning needs them: how many, their queue IDs, and
    per boot of the peer the newest end-of-data on each of its clocks."""

    count: int = 0
    ids: set[str] = field(default_factory=set)
    newest: dict[str, Moment] = field(default_factory=dict)

    def add(self, envelope: Envelope) -> None:
        self.count += 1
        self.ids.add(envelope.queue_id)
        seen = self.newest.get(envelope.boot)
        if seen is None:
            self.newest[envelope.boot] = envelope.moment
        elif seen.mono is None or envelope.mono is None:
            # The shadows of a boot all have a monotonic time; those of none ("") have none.
            self.newest[envelope.boot] = Moment(max(seen.wall, envelope.time), envelope.boot)
        else:
            wall, mono = max(seen.wall, envelope.time), max(seen.mono, envelope.mono)
            self.newest[envelope.boot] = Moment(wall, envelope.boot, mono)

    def covered_by(self, coverage: Coverage) -> bool:
        return coverage.covers_all(self.ids, self.newest.values())


def _summary(fd: int) -> _Summary:
    """The summary of an open segment, from the records' headers and envelopes (the messages
    are not read)."""
    summary = _Summary()
    for record in records(fd, 1 << 62, False):
        if record.envelope:
            summary.add(record.envelope)
    return summary


def sync_filesystem(path: Path) -> None:
    """syncfs(2) of the filesystem holding `path`: everything written to it reaches the disk.
    rsync fsyncs nothing it writes into the replica; a shadow is dropped only once the replica
    files that cover it are on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if _libc().syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs of {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@dataclass
class _Segment:
    name: str
    fd: int | None  # open until closed under sync_lock
    opened: float  # time.monotonic()
    size: int = 0
    shadows: _Summary = field(default_factory=_Summary)
    taking: bool = False  # new records go to it
    dirty: bool = False  # written since its last fdatasync


# An earlier release kept one file per shadow, named by its queue ID: MAGIC_V1, the envelope
# as one JSON line, the message. A store found so is moved into a segment when the receiver
# starts (an upgrade), so that the promotion import finds those shadows too.
MAGIC_V1 = b"MRSHADOW1\n"


class ShadowStore:
    """One directory of segments, at most `max_bytes` of them in all."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # Lock order: sync_lock, then lock. `lock` guards the segments and the counters;
        # `sync_lock` is held for the fdatasyncs and for closing a segment, so that no
        # segment is closed under an fdatasync of it.
        self.lock = threading.Lock()
        self.sync_lock = threading.Lock()
        self.written = 0
        self.synced = 0
        # Records up to this number were in a segment whose fdatasync failed: never
        # acknowledged, even if a later fdatasync succeeds (Linux reports a lost write once).
        self.failed_upto = 0
        self.dir_pending = False
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.segments: list[_Segment] = []
        self.used = 0
        legacy: list[str] = []
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith("."):
                # A write a crash interrupted (an earlier release's), never acknowledged.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            elif is_segment(entry.name):
                segment = self._scan(entry.name)
                self.segments.append(segment)
                self.used += segment.size
            elif QUEUE_ID.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                legacy.append(entry.name)
            elif entry.is_file(follow_symlinks=False):
                # Refused segments: kept for the operator, counted in the bound.
                self.used += entry.stat(follow_symlinks=False).st_size
        if legacy:
            self._move_legacy(legacy)

    def _scan(self, name: str) -> _Segment:
        segment = _Segment(name, None, 0.0)
        fd = os.open(self.root / name, READ_FLAGS)
        try:
            segment.size = os.fstat(fd).st_size
            segment.shadows = _summary(fd)
        finally:
            os.close(fd)
        return segment

    def _move_legacy(self, names: list[str]) -> None:
        moved = []
        for name in names:
            data = (self.root / name).read_bytes()
            line_end = data.find(b"\n", len(MAGIC_V1))
            try:
                if not data.startswith(MAGIC_V1) or line_end < 0:
                    raise ShadowFormatError("not a shadow file")
                envelope = Envelope.from_dict(json.loads(data[len(MAGIC_V1) : line_end]))
            except (ValueError, RecursionError, ShadowFormatError):
                # Left as it is, for the operator (the import never reads it).
                self.used += len(data)
                continue
            # Outside the bound: these were acknowledged already, and a record is a few bytes
            # larger than its file, so a store near its bound would refuse its own shadows
            # (and the receiver would not start).
            self.put(envelope, data[line_end + 1 :], bounded=False)
            moved.append(name)
        self.close_old(float("inf"))  # every moved shadow durable in a segment first
        for name in moved:
            os.unlink(self.root / name)
        fsync_directory(self.root)

    def put(self, envelope: Envelope, message: bytes, bounded: bool = True) -> None:
        """Store durably (the record and its segment's name fsync'ed) before returning;
        StoreFull when the store has no room (unless not `bounded`)."""
        data = encode(envelope, message)
        now = time.monotonic()
        current = self._current()
        if current is not None and now - current.opened >= SEGMENT_SECONDS:
            self.close_old(now)
        with self.lock:
            if bounded and self.used + len(data) > self.max_bytes:
                raise StoreFull(
                    f"the shadow store holds {self.used} of {self.max_bytes} bytes: "
                    f"no room for {len(data)} more"
                )
            current = self._current()
            if current is None or current.size >= SEGMENT_BYTES:
                current = self._open_segment(now)
            assert current.fd is not None
            try:
                written = os.write(current.fd, data)
            except OSError:
                # What part of it went in would break the framing for a record after it.
                current.taking = False
                raise
            current.size += written
            self.used += written
            if written != len(data):
                current.taking = False
                raise OSError(f"short write to shadow segment {current.name}")
            current.shadows.add(envelope)
            current.dirty = True
            self.written += 1
            mine = self.written
        self._commit(mine)

    def _current(self) -> _Segment | None:
        if self.segments and self.segments[-1].taking:
            return self.segments[-1]
        return None

    def _open_segment(self, now: float) -> _Segment:
        """Under `lock`: a new segment, whose name the next commit makes durable."""
        if self.segments:
            self.segments[-1].taking = False
        name = f"segment-{time.time_ns():020d}-{secrets.token_hex(4)}"
        fd = os.open(
            self.root / name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        segment = _Segment(name, fd, now, taking=True)
        self.segments.append(segment)
        self.dir_pending = True
        return segment

    def _commit(self, record: int) -> None:
        """Return once fdatasyncs that began after record number `record` was written have
        finished: either those this thread runs, or those another thread ran meanwhile."""
        with self.sync_lock:
            if record <= self.failed_upto:
                raise OSError(f"the shadow store's fdatasync failed under {self.root}")
            if self.synced >= record:
                return
            with self.lock:
                covered = self.written
                dirty = [s for s in self.segments if s.dirty]
                for segment in dirty:
                    segment.dirty = False
                directory, self.dir_pending = self.dir_pending, False
            self._sync(dirty, directory, covered)
            self.synced = covered

    def _sync(self, dirty: list[_Segment], directory: bool, covered: int) -> None:
        """Under sync_lock: fdatasync the segments (and the directory). When that fails, no
        record written so far is ever acknowledged and those segments take no more."""
        try:
            for segment in dirty:
                assert segment.fd is not None
                os.fdatasync(segment.fd)
            if directory:
                fsync_directory(self.root)
        except OSError:
            self.failed_upto = max(self.failed_upto, covered)
            for segment in dirty:
                segment.taking = False
            self.dir_pending = self.dir_pending or directory
            raise

    def close_old(self, now: float) -> None:
        """Close the segments that take no more records, and the current one once it is
        SEGMENT_SECONDS old, each made durable first."""
        with self.sync_lock, self.lock:
            closing = [
                s
                for s in self.segments
                if s.fd is not None and not (s.taking and now - s.opened < SEGMENT_SECONDS)
            ]
            dirty = [s for s in closing if s.dirty]
            for segment in dirty:
                segment.dirty = False
            directory, self.dir_pending = self.dir_pending, False
            self._sync(dirty, directory, self.written)
            for segment in closing:
                assert segment.fd is not None
                os.close(segment.fd)
                segment.fd = None
                segment.taking = False

    def prune(self, coverage: Coverage, first: Callable[[], None] = lambda: None) -> int:
        """Drop every closed segment whose records the last sync covers all (one that is old
        is closed first); how many shadows went. `first` runs before anything is dropped, and
        nothing is when it raises."""
        self.close_old(time.monotonic())
        with self.lock:
            gone = [s for s in self.segments if s.fd is None and s.shadows.covered_by(coverage)]
        if not gone:
            return 0
        first()
        with self.lock:
            for segment in gone:
                self.segments.remove(segment)
                self.used -= segment.size
        for segment in gone:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / segment.name)
        fsync_directory(self.root)
        return sum(s.shadows.count for s in gone)

    def count(self) -> int:
        with self.lock:
            return sum(s.shadows.count for s in self.segments)
