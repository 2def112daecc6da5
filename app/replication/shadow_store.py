"""The shadow store: the peer's not-yet-replicated messages, one durable file each, bounded.

A shadow file is `MAGIC`, one JSON line with the envelope, then the message exactly as the
peer's Postfix received it. It is written under a dot name, fsync'ed, renamed to its queue ID
and the directory fsync'ed: once `put` returns, a power cut keeps it. The file's mtime is the
envelope's time (the peer's clock at end-of-data), so pruning by the peer's snapshot time
(same clock) needs a stat per file, never a read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"MRSHADOW1\n"
QUEUE_ID = re.compile(r"[0-9A-Za-z]{6,32}")
# An envelope line longer than this is not one we wrote (a thousand recipients fit easily).
MAX_ENVELOPE_BYTES = 1024 * 1024


class StoreFull(Exception):
    """Storing this message would pass SHADOW_STORE_MAX_BYTES."""


class ShadowFormatError(Exception):
    """Not a shadow file or envelope (the peer's data is untrusted)."""


@dataclass(frozen=True)
class Envelope:
    queue_id: str
    sender: str
    recipients: list[str]
    client_address: str
    time: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id,
            "sender": self.sender,
            "recipients": self.recipients,
            "client_address": self.client_address,
            "time": self.time,
        }

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
        return cls(queue_id, sender, list(rcpts), client, float(when))


def encode(envelope: Envelope, message: bytes) -> bytes:
    return MAGIC + json.dumps(envelope.as_dict()).encode() + b"\n" + message


def decode(data: bytes) -> tuple[Envelope, bytes]:
    if not data.startswith(MAGIC):
        raise ShadowFormatError("not a shadow file")
    line_end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_ENVELOPE_BYTES)
    if line_end < 0:
        raise ShadowFormatError("no envelope line")
    try:
        raw = json.loads(data[len(MAGIC) : line_end])
    except ValueError:
        raise ShadowFormatError("the envelope is not JSON") from None
    return Envelope.from_dict(raw), data[line_end + 1 :]


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShadowStore:
    """One directory of shadow files, at most `max_bytes` of them in all."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        # Group commit of the directory: one fsync covers every rename done before it began,
        # so messages stored at the same time share it (see put).
        self.sync_lock = threading.Lock()
        self.renamed = 0
        self.synced = 0
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Dot names are writes a crash interrupted: never acknowledged, so never needed.
        for leftover in root.glob(".*"):
            leftover.unlink(missing_ok=True)
        self.used = sum(self._size(p) for p in root.iterdir())

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.lstat().st_size
        except FileNotFoundError:
            return 0

    def put(self, envelope: Envelope, message: bytes) -> Path:
        """Store durably (file and directory fsync'ed) before returning; StoreFull when the
        store has no room. A second copy of a queue ID replaces the first."""
        data = encode(envelope, message)
        target = self.root / envelope.queue_id
        with self.lock:
            replaced = self._size(target)
            if self.used - replaced + len(data) > self.max_bytes:
                raise StoreFull(
                    f"the shadow store holds {self.used} of {self.max_bytes} bytes: "
                    f"no room for {len(data)} more"
                )
            self.used += len(data) - replaced
        tmp = self.root / f".{envelope.queue_id}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.utime(fd, (envelope.time, envelope.time))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, target)
            with self.lock:
                self.renamed += 1
                mine = self.renamed
            self._sync_directory(mine)
        except BaseException:
            with self.lock:
                self.used -= len(data) - replaced
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return target

    def _sync_directory(self, rename: int) -> None:
        """Return once an fsync of the directory that began after rename number `rename`
        has finished: either the one this thread runs, or one another thread ran meanwhile."""
        with self.sync_lock:
            if self.synced >= rename:
                return
            with self.lock:
                covered = self.renamed
            fsync_directory(self.root)
            self.synced = covered

    def prune(self, before: float) -> int:
        """Drop every shadow whose time is before `before`; how many went."""
        dropped = 0
        for path in self.root.iterdir():
            if path.name.startswith("."):
                continue
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if st.st_mtime < before:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    dropped += 1
                    with self.lock:
                        self.used -= st.st_size
        if dropped:
            fsync_directory(self.root)
        return dropped

    def count(self) -> int:
        return sum(1 for p in self.root.iterdir() if not p.name.startswith("."))
