"""The sync mark: what a queue sync tells the peer's shadow receiver about the snapshot it
shipped, so that the receiver drops exactly the shadows the replica now covers.

The active node's agent writes it (app/agent/queuesync.py) and ships it in an rsync of its own,
once the copy of the queue it describes has reached the replica in full. It holds the moment
just before Postfix was held, on two clocks, and the queue IDs whose message files were not
committed yet in the snapshot (cleanup had them open, mode 0600: the snapshot holds no usable
copy).

A shadow is covered when its end-of-data came before that moment and its queue ID is not one
of those: its queue file was then committed, so the snapshot holds it, or it had left the
queue (delivered, bounced or expired). The milter stamps end-of-data on the same two clocks
(app/replication/shadow_milter.py). On the same boot the monotonic clock decides, which no
time step moves; the wall clock only for a shadow of another boot of the active node or of an
earlier release, less the copy's timeout and PRUNE_SLACK_SECONDS. The receiver reads the mark
as untrusted input, like the rest of the replica.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from app.durable import replace_file

# The mark in the replica (the agent keeps its own copy under /var/lib/mailrelay-agent).
NAME = "shadow-prune-before"
BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
QUEUE_ID = re.compile(r"[0-9A-Za-z]{6,32}")
# A queue with more files in flight than this at one moment is not one Postfix makes
# (default_process_limit is 100); a longer list is refused, and nothing is dropped.
MAX_PENDING = 100_000
# For shadows judged by the wall clock only: between end-of-data and the commit of the queue
# file lie the copy (at most SHADOW_TIMEOUT_MS) and cleanup's own fsync. Kept shadows of mail
# the peer delivered meanwhile are what a takeover delivers twice, so this stays short.
PRUNE_SLACK_SECONDS = 1.0


@functools.cache
def boot_id() -> str:
    """This boot of the kernel: a monotonic time means something only within it."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@dataclass(frozen=True)
class Moment:
    """A moment on the active node: its wall clock, and its boot's monotonic clock."""

    wall: float
    boot: str = ""  # "" when not known (a shadow or mark of an earlier release)
    mono: float | None = None

    @classmethod
    def now(cls) -> Moment:
        return cls(time.time(), boot_id(), time.monotonic())


@dataclass(frozen=True)
class SyncMark:
    began: Moment  # just before Postfix was held for the snapshot
    pending: frozenset[str] = frozenset()  # queue files not committed in the snapshot

    def as_text(self) -> str:
        return (
            json.dumps(
                {
                    "time": self.began.wall,
                    "boot": self.began.boot,
                    "mono": self.began.mono,
                    "pending": sorted(self.pending),
                }
            )
            + "\n"
        )


class Coverage:
    """The last sync's mark as the receiver applies it: which shadows the replica covers."""

    def __init__(self, mark: SyncMark, copy_timeout: float) -> None:
        self.mark = mark
        self.wall_before = mark.began.wall - copy_timeout - PRUNE_SLACK_SECONDS

    def covers_moment(self, moment: Moment) -> bool:
        began = self.mark.began
        same_boot = bool(began.boot) and moment.boot == began.boot
        if same_boot and moment.mono is not None and began.mono is not None:
            return moment.mono < began.mono
        return moment.wall < self.wall_before

    def covers(self, queue_id: str, moment: Moment) -> bool:
        return queue_id not in self.mark.pending and self.covers_moment(moment)

    def covers_all(self, queue_ids: Iterable[str], newest: Iterable[Moment]) -> bool:
        """Whether it covers every shadow of a segment: their queue IDs, and per boot the
        newest end-of-data among them."""
        return self.mark.pending.isdisjoint(queue_ids) and all(map(self.covers_moment, newest))


def write(path: Path, mark: SyncMark) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Read by the peer's receiver, another user, once rsync -p has put it in the replica.
    replace_file(path, mark.as_text().encode(), mode=0o644)


def read(path: Path, copy_timeout: float) -> Coverage | None:
    """The coverage of the mark at `path`; None when there is none, or none that can be read
    (nothing is then dropped). A bare number is the mark of an earlier release: its time."""
    try:
        with open(path, "rb", opener=_no_follow) as file:
            text = file.read(64 * MAX_PENDING)
        raw = json.loads(text)
        mark = _parse(raw)
    except (OSError, ValueError, RecursionError):
        return None
    return None if mark is None else Coverage(mark, copy_timeout)


def _parse(raw: object) -> SyncMark | None:
    if not isinstance(raw, dict):
        wall = finite(raw)
        return None if wall is None else SyncMark(Moment(wall))
    wall, mono = finite(raw.get("time")), finite(raw.get("mono"))
    boot, pending = raw.get("boot"), raw.get("pending")
    if wall is None or not isinstance(boot, str) or not isinstance(pending, list):
        return None
    if boot and (not BOOT_ID.fullmatch(boot) or mono is None):
        return None
    if len(pending) > MAX_PENDING or not all(
        isinstance(p, str) and QUEUE_ID.fullmatch(p) for p in pending
    ):
        return None
    return SyncMark(Moment(wall, boot, mono if boot else None), frozenset(pending))


def finite(value: object) -> float | None:
    """A JSON number as a finite float; None for anything else (a boolean, an integer too
    large for a float, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
