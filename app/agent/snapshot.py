"""freeze mode's frozen pass: bring the local snapshot up to date with only what changed.

rsync, run again under the freeze, compares every queue file on both sides (a stat of each, and
a file list through a pipe between two processes): Postfix stayed frozen 0.15 s at 10,000
queued messages and 1.9 s at 100,000 (scripts/bench sync), only to find the few files that
changed since the bulk pass.

Here a record of the queue (each file's inode, size, mtime, ctime and mode) is taken *before*
the bulk pass. Under the freeze one walk of the queue finds what changed since: a file whose
record is the same was not touched since before the bulk pass began, so the bulk pass copied it
as it is now. Any write, chmod, rename or new link sets the file's ctime, which no program can
set back, so nothing Postfix does to a file goes unseen. New and changed files are copied into
the snapshot, and what is no longer in the queue is removed from it: the same result as
`rsync -rlpt --delete` of the regular files, with half the system calls and no second process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

# What a file looked like: (inode, size, mtime_ns, ctime_ns, mode).
Signature = tuple[int, int, int, int, int]
Record = dict[str, Signature]

# Files are written here first and renamed into place. It is inside the snapshot (one
# filesystem, so the rename is atomic) but in none of the queue parts that are shipped.
_SCRATCH = ".copying"


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
    found: Record = {}
    for name, entry in _walk(spool, parts):
        with contextlib.suppress(FileNotFoundError):
            found[name] = _signature(entry.stat(follow_symlinks=False))
    return found


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


def update(spool: Path, snapshot: Path, before: Record, parts: Iterable[str]) -> tuple[int, int]:
    """Make snapshot/part match spool/part for every part, copying only the files that are not
    as `before` recorded them (or missing from the snapshot). Run with Postfix frozen.
    Returns the files and bytes copied."""
    parts = tuple(parts)
    scratch = snapshot / _SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)  # left by a run that died mid-copy
    scratch.mkdir(mode=0o700)
    try:
        stale = {name for name, _ in _walk(snapshot, parts)}
        files = size = 0
        for name, entry in _walk(spool, parts):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            in_snapshot = name in stale
            stale.discard(name)
            if in_snapshot and before.get(name) == _signature(st):
                continue
            _copy(spool, snapshot, name, st, scratch)
            files += 1
            size += st.st_size
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(snapshot / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return files, size
