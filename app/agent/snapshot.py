"""freeze mode's local snapshot: bring it up to date copying only what changed.

rsync, run again under the freeze, compares every queue file on both sides (a stat of each, and
a file list through a pipe between two processes), and copies whatever changed since its bulk
pass: Postfix stayed frozen 0.15 s at 10,000 queued messages and 1.9 s at 100,000
(scripts/bench sync), most of it for files Postfix had moved while the bulk pass ran.

Here a record of the queue (each file's inode, size, mtime, ctime and mode) is taken before
each pass. A later walk of the queue finds what changed since: a file whose signature is the
one recorded, with a ctime older than the record by a margin, was not touched since before
the pass began, so that pass left it right in the snapshot. Any write, chmod, rename or new
link sets the file's ctime, which no program can set back; the margin covers the kernel's
coarse timestamps (a change in the same clock tick as the record's stat would keep the ctime).

The agent runs three passes: rsync while Postfix runs (the bulk), `update` while Postfix runs
(catches up with what moved during the bulk), then `update` under the freeze (only what moved
during the catch-up). The result is that of `rsync -rlpt --delete` of the regular files.
What is left to trust is the bulk pass: like any rsync, it takes a file whose size and mtime
match the snapshot's copy as unchanged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# What a file looked like: (inode, size, mtime_ns, ctime_ns, mode).
Signature = tuple[int, int, int, int, int]

# A file whose ctime is within this of the record may have changed right after its stat.
_MARGIN_NS = 1_000_000_000

# Files are written here first and renamed into place. It is inside the snapshot (one
# filesystem, so the rename is atomic) but in none of the queue parts that are shipped.
_SCRATCH = ".copying"


@dataclass
class Record:
    """The queue's files as a walk that started at taken_ns (wall clock, as ctime) saw them."""

    taken_ns: int
    files: dict[str, Signature] = field(default_factory=dict)

    def unchanged(self, name: str, signature: Signature) -> bool:
        return self.files.get(name) == signature and signature[3] < self.taken_ns - _MARGIN_NS


@dataclass
class Pass:
    files: int
    bytes: int
    seen: Record


def _signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _walk(root: Path, parts: Iterable[str]) -> Iterator[tuple[str, os.DirEntry]]:
    """The regular files under root/part for each part: (path relative to root, entry).

    Only the directories are read (names and types); a caller that needs a file's stat asks
    its entry. A directory that vanishes while Postfix runs is skipped: Postfix keeps its
    queue directories, so that is rare.
    """
    pending = list(parts)
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(root / relative) as entries:
                for entry in entries:
                    name = f"{relative}/{entry.name}"
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(name)
                    elif entry.is_file(follow_symlinks=False):
                        yield name, entry
        except FileNotFoundError:
            continue


def record(spool: Path, parts: Iterable[str]) -> Record:
    """What every queue file looks like now; taken before the bulk pass."""
    found = Record(time.time_ns())
    for name, entry in _walk(spool, parts):
        with contextlib.suppress(FileNotFoundError):
            found.files[name] = _signature(entry.stat(follow_symlinks=False))
    return found


# The queue directories that hold messages (the others hold their delivery logs, mode 0600).
MESSAGE_PARTS = ("incoming", "active", "deferred", "hold")
_MESSAGE_PREFIXES = tuple(f"{part}/" for part in MESSAGE_PARTS)


def uncommitted(found: Record) -> frozenset[str]:
    """The queue IDs of the message files that cleanup has not committed yet: mode 0600, set
    to 0700 once the file is complete (../shared notes: postfix-ha.md). Mostly in incoming/;
    in hold/ or deferred/ when a HOLD or DELAY rule moved it there (cleanup renames the file
    before it commits it)."""
    return frozenset(
        name.rpartition("/")[2]
        for name, signature in found.files.items()
        if name.startswith(_MESSAGE_PREFIXES) and not signature[4] & stat.S_IXUSR
    )


def _copy(spool: Path, snapshot: Path, name: str, st: os.stat_result, scratch: Path) -> None:
    """Copy one file with its mode and times (as rsync -pt), renamed into place in one step."""
    target = snapshot / name
    staged = scratch / target.name
    with open(spool / name, "rb") as reader, open(staged, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
    os.chmod(staged, st.st_mode & 0o7777)
    # A deferred file's mtime is its next retry time: it must come across unchanged.
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
    if not target.parent.is_dir():
        _make_parents(spool, snapshot, Path(name).parent)
    os.replace(staged, target)


def _make_parents(spool: Path, snapshot: Path, directory: Path) -> None:
    """A queue directory new to the snapshot (a hashed subdirectory), with the queue's modes."""
    for relative in reversed((directory, *directory.parents[:-1])):
        target = snapshot / relative
        if not target.is_dir():
            target.mkdir()
            os.chmod(target, os.stat(spool / relative).st_mode & 0o7777)


def update(spool: Path, snapshot: Path, before: Record, parts: Iterable[str]) -> Pass:
    """Make snapshot/part match spool/part for every part, copying only the files that
    `before` cannot vouch for (or that the snapshot lacks). Exact under the freeze; while
    Postfix runs, a file that changes during its copy is caught by the next pass, to which the
    returned record (each file as it was just before it was looked at) is handed."""
    parts = tuple(parts)
    scratch = snapshot / _SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)  # left by a run that died mid-copy
    scratch.mkdir(mode=0o700)
    try:
        stale = {name for name, _ in _walk(snapshot, parts)}
        done = Pass(0, 0, Record(time.time_ns()))
        for name, entry in _walk(spool, parts):
            try:
                st = entry.stat(follow_symlinks=False)
                signature = _signature(st)
                in_snapshot = name in stale
                stale.discard(name)
                if not (in_snapshot and before.unchanged(name, signature)):
                    _copy(spool, snapshot, name, st, scratch)
                    done.files += 1
                    done.bytes += st.st_size
            except FileNotFoundError:
                continue  # Postfix moved it (only while it runs): the next pass sees where
            done.seen.files[name] = signature
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(snapshot / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return done
