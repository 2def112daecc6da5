"""What one takeover of the peer's queue has taken so far, on this node's disk.

A takeover may take several tries: a sendmail fails part-way, the VRRP reader gives up waiting
for a long one and asks again, the agent restarts. What an earlier try took must neither go
into the queue a second time (the shadow store keeps a segment until all of it went in, and a
replica file stays until its requeue is done) nor be missing from the list the returning peer
deletes. So each try appends what it took to this file and fsyncs it before it goes on, and
every answer names what the earlier tries of the same takeover took.

The file starts with the takeover's key (the time of the MASTER event the reader passes); a
try with another key starts the file afresh. One line per step, `replica ID...` or
`shadow ID...`; a line cut short by a power cut (no newline) was never acknowledged, and is
not read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from app.agent.replica import QUEUE_NAME
from app.durable import replace_file, write_all

KEY = re.compile(r"[0-9A-Za-z:.+-]{1,64}")
KINDS = ("replica", "shadow")


class JournalError(Exception):
    """The key is not one (the caller's input), or the journal cannot be written."""


class TakeoverJournal:
    def __init__(self, path: Path, key: str) -> None:
        if not KEY.fullmatch(key):
            raise JournalError(f"a takeover's key is 1-64 of [0-9A-Za-z:.+-], not {key[:80]!r}")
        self.path = path
        self.key = key
        self.taken: dict[str, set[str]] = {kind: set() for kind in KINDS}
        lines = _complete_lines(path)
        if lines[:1] == [f"takeover {key}"]:
            for line in lines[1:]:
                kind, _, ids = line.partition(" ")
                if kind in self.taken:
                    self.taken[kind].update(i for i in ids.split() if QUEUE_NAME.fullmatch(i))
        else:
            self._start()
        self.before = {kind: frozenset(ids) for kind, ids in self.taken.items()}

    def earlier(self) -> list[str]:
        """What the earlier tries of this takeover took, replica and shadows."""
        return sorted(self.before["replica"] | self.before["shadow"])

    def took(self, kind: str, queue_ids: Iterable[str]) -> None:
        """Append what a step took (or is about to take) and fsync it."""
        ids = [i for i in queue_ids if i not in self.taken[kind]]
        if not ids:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            write_all(fd, f"{kind} {' '.join(ids)}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.taken[kind].update(ids)

    def _start(self) -> None:
        replace_file(self.path, f"takeover {self.key}\n".encode())


def _complete_lines(path: Path) -> list[str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise JournalError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as journal:
        data = journal.read()
    complete, _, _cut_short = data.rpartition(b"\n")
    return complete.decode("ascii", errors="replace").split("\n") if complete else []
