"""Log ingestion: the Postfix log file -> mail_logs, rejection_logs (and log_messages context).

Exactly once, across crashes, restarts, rotations and a second runner: every batch writes its
rows and moves the cursor (inode + byte position after the last complete line) in one
transaction, and the cursor row is locked (SELECT ... FOR UPDATE) and re-read inside that
transaction before the file is read. A runner that waited for the lock therefore continues where
the other one stopped, and a batch that fails leaves both the rows and the cursor as they were.

Addresses are stored in lower case: operators search them case-insensitively, and the domain
part is case-insensitive anyway.

A delivery line says only queue id, recipient and outcome; sender, size, client and message-id
were logged earlier by smtpd, cleanup and qmgr, possibly in an earlier batch or run. That context
is kept per (node, queue id) in log_messages, so that each delivery becomes one complete row.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import hashlib
import itertools
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import asyncpg

from app.db import pgcopy
from app.db.tables import LogCursor
from app.postfix import logparse
from app.settings import Settings

log = logging.getLogger("mailrelay.ingest")

# Outcomes a mail_logs row can have. Delivery lines with other statuses (deliverable and
# undeliverable, from address verification probes) are not mail anybody sent.
MAIL_STATUSES = frozenset({"sent", "deferred", "bounced"})

# Rotated copies that are compressed are new files (new inodes) and cannot be read in place.
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".Z")


class IngestError(Exception):
    """The log file cannot be read (e.g. permissions); the message says which and why."""


@dataclass
class IngestResult:
    lines: int = 0  # complete lines consumed
    events: int = 0  # of which lines that said something about a message (rows, context)
    mail_rows: int = 0
    rejection_rows: int = 0
    contexts: int = 0  # log_messages rows written
    batches: int = 0
    rotated: bool = False  # moved on to a new file (after finishing the rotated one if found)
    truncated: bool = False  # the same file shrank: started again at 0
    lost_tail: bool = False  # the same file lost its end (a power cut): went on from its end
    missing: bool = False  # no log file yet (Postfix has not logged anything)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.mail_rows + self.rejection_rows

    def add(self, other: IngestResult) -> None:
        """Count another run in (the follower reports its runs of a minute as one)."""
        for name in ("lines", "events", "mail_rows", "rejection_rows", "contexts", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rotated |= other.rotated
        self.lost_tail |= other.lost_tail
        self.truncated |= other.truncated
        self.missing = other.missing
        self.seconds += other.seconds


@dataclass
class _Read:
    """What one batch reads: complete lines of the file `inode`, the offset after them, and
    (filled in by _read_batch) what they say about messages (logparse.Record)."""

    inode: int
    end: int
    lines: list[bytes] = field(default_factory=list)
    rotated: bool = False
    truncated: bool = False
    missing: bool = False
    lost_tail: bool = False
    head: str = ""  # the file's first line, hashed (_head)
    records: list[logparse.Record] = field(default_factory=list)
    # The queue IDs whose context the batch needs from log_messages (see _continued).
    continued: list[str] = field(default_factory=list)
    # What the batch writes, when the run already knew every context it needs (see _plan).
    plan: _Plan | None = None


@dataclass
class _Context:
    first_seen_at: dt.datetime
    message_id: str = ""
    sender: str = ""
    size: int | None = None
    client: str = ""

    def values(self) -> tuple:
        return (self.first_seen_at, self.message_id, self.sender, self.size, self.client)


@dataclass
class _Plan:
    """What one batch writes, made where the batch is planned (in the thread that parses it,
    while the database writes the batch before), so that the event loop only sends it: its
    rows as COPY data, the contexts it changed (COPY data for log_messages' staging table),
    the columns of its expiries, and `known`: every context the batch read or made, as
    log_messages holds them once it is committed (_Context.values())."""

    known: dict[str, tuple]
    writes: int  # contexts changed
    contexts: bytes
    mail: _MailRows
    rejections: int
    rejection_rows: bytes
    expired: int
    expired_columns: list[list]
    events: int


# The contexts a run has written or read, as log_messages holds them after its last commit
# (queue ID -> _Context.values()): the next batch takes the contexts of messages it continues
# from here, so that its rows are worked out in the thread that parses it, while the database
# writes the batch before. Forgotten past this many (they are in log_messages all the same).
_KNOWN_AT_MOST = 200_000

# How long the thread that parses the next batch may hold the GIL while the event loop waits
# for it. Python's default (5 ms) is paid on every reply from PostgreSQL, a dozen per batch:
# with it the read-ahead overlapped nothing (wall time = Python + PostgreSQL CPU time, 4.2 s
# for 245k lines); at 0.2 ms the loop gets each reply at once (3.4 s, scripts/bench logs).
_SWITCH_INTERVAL = 0.0002

# How often the follower looks for new lines: a delivered message is in message tracking about
# this long plus one batch after Postfix logged it (scripts/bench freshness).
FOLLOW_INTERVAL = 0.25
# The follower logs what it read once a minute, not once per run.
FOLLOW_REPORT_SECONDS = 60.0


async def follow(settings: Settings, stop: asyncio.Event) -> None:
    """run_once every FOLLOW_INTERVAL until `stop` is set. Each run is what a single run is
    (every batch commits its rows with its cursor), so stopping between two runs loses nothing
    and a second reader at the same time reads nothing twice."""
    path = Path(settings.postfix_log_file)
    done = IngestResult()
    reported = time.monotonic()
    while not stop.is_set():
        done.add(await run_once(settings, log_run=False))
        if time.monotonic() - reported >= FOLLOW_REPORT_SECONDS:
            _log_run(path, done)
            done, reported = IngestResult(), time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=FOLLOW_INTERVAL)
    _log_run(path, done)


# Lines per batch (one transaction). Each batch costs PostgreSQL some statements and trigger
# runs whatever its size: 10,000 took about 0.05 of 1.6 CPU s less than 5,000 over the bench
# log, and 20,000 no less than 10,000 (scripts/bench logs' log, alternated). A follower's runs
# read a few hundred lines each and never reach it.
BATCH_LINES = 10_000
# A log line is at most about 2,000 bytes (Postfix cuts a record there).
_HEAD_BYTES = 8192


async def run_once(
    settings: Settings, max_lines: int = BATCH_LINES, log_run: bool = True
) -> IngestResult:
    """Read the log from the cursor to its last complete line, in batches of `max_lines`."""
    started = time.monotonic()
    path = Path(settings.postfix_log_file)
    result = IngestResult()
    # While a full batch is written, the next one is read, parsed and turned into rows in a
    # thread: the database works in its own process, so on two cores that work and the writing
    # overlap. That read is used only if the locked cursor is where it started (no other runner
    # moved it meanwhile, nor wrote contexts); log files only grow, so lines read a moment early
    # are the same lines. Otherwise the contexts this run knew are forgotten too.
    ahead: asyncio.Future[_Read] | None = None
    ahead_from = _Cursor(0, 0, "")
    known: dict[str, tuple] = {}
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(_SWITCH_INTERVAL)
    # No cyclic garbage collection while a run lasts: a batch makes a few hundred thousand
    # tuples (records, rows), none in a reference cycle, which the collector walked again and
    # again (about 7 % of parsing and planning the bench log, one thread, alternated). What a
    # run leaves in cycles (a few asyncio objects per batch) waits for the run's end.
    collecting = gc.isenabled()
    gc.disable()
    # A NUL in a line (zeroed blocks, where a crash left the log's end unwritten) is refused by
    # PostgreSQL in text, and the batch with it would fail again at every run. Looking for one
    # in every line tripled the time to read the lines (245k lines: 36 -> 101 ms, alternated,
    # the machine busy), a few percent of a run: once PostgreSQL has refused a batch,
    # it is read again with each NUL as "?" (as Postfix writes other control characters).
    scrub = False
    try:
        while True:
            counted = dataclasses.replace(result)
            try:
                async with LogCursor._meta.db.transaction():
                    # For this transaction only (set_config(..., true) is SET LOCAL), in one round
                    # trip. jit: the log totals trigger's function runs with enable_seqscan off,
                    # which prices its small statements in the billions, and PostgreSQL then
                    # JIT-compiles them: 40 to 60 ms per batch on mail_logs, against 1 to 8 ms
                    # without (EXPLAIN ANALYZE). Better fixed on the function (SET jit = off) for
                    # every writer. enable_bitmapscan: the expiries' lookup of each message's last
                    # deferrals (_INSERT_EXPIRED) is by queue ID; with bitmap scans PostgreSQL may
                    # AND that with a range of the (at) index, which on a young day partition
                    # without statistics read tens of thousands of entries per expiry (3.5 s of
                    # 4.9 for 245k lines in batches of 10,000, auto_explain). No other statement
                    # of a batch wants a bitmap scan.
                    await LogCursor.raw(
                        "SELECT set_config('jit', 'off', true), "
                        "set_config('enable_bitmapscan', 'off', true)"
                    )
                    cursor = await _lock_cursor(str(path))
                    if ahead is not None and ahead_from == cursor:
                        read = await ahead
                    else:
                        if ahead is not None:
                            ahead.cancel()
                        known = {}  # a new dict: a cancelled read may still be looking in the old
                        read = await asyncio.to_thread(
                            _read_batch, path, cursor, max_lines, settings.node_id, known, scrub
                        )
                    ahead = None
                    plan = read.plan or await _plan_with_stored(settings.node_id, read, known)
                    if len(known) > _KNOWN_AT_MOST:
                        known = {}
                    known.update(plan.known)
                    if len(read.lines) == max_lines:
                        ahead_from = _Cursor(read.inode, read.end, read.head)
                        ahead = asyncio.ensure_future(
                            asyncio.to_thread(
                                _read_batch,
                                path,
                                ahead_from,
                                max_lines,
                                settings.node_id,
                                known,
                                scrub,
                            )
                        )
                    result.rotated |= read.rotated
                    result.truncated |= read.truncated
                    result.lost_tail |= read.lost_tail
                    result.missing = read.missing
                    if read.lines:
                        result.lines += len(read.lines)
                        await _write_batch(settings.node_id, plan, result)
                        result.batches += 1
                    after = _Cursor(read.inode, read.end, read.head)
                    moved = after != cursor
                    if moved:
                        await _move_cursor(str(path), after)
            except asyncpg.exceptions.CharacterNotInRepertoireError:
                if scrub:
                    raise
                log.warning("ingest-logs %s: PostgreSQL refused a NUL: reading it as '?'", path)
                scrub, result, known = True, counted, {}
                if ahead is not None:
                    ahead.cancel()
                    ahead = None
                continue
            if not read.lines and not moved:
                break
    finally:
        sys.setswitchinterval(switch_interval)
        if collecting:
            gc.enable()
        if ahead is not None:
            ahead.cancel()
    result.seconds = time.monotonic() - started
    if log_run:
        _log_run(path, result)
    return result


def _log_run(path: Path, result: IngestResult) -> None:
    notes = "".join(
        f"; {note}"
        for note, flag in (
            ("rotated", result.rotated),
            ("truncated", result.truncated),
            ("the log lost its end (a power cut?): went on from its end", result.lost_tail),
            ("no log file yet", result.missing),
        )
        if flag
    )
    # An idle run (every 10 s on every node) logs at DEBUG: the journal keeps the runs that did
    # something, one line each. A missing log is a warning: Postfix logs as soon as it starts,
    # so POSTFIX_LOG_FILE most likely names the wrong file.
    level = logging.INFO if result.lines or notes else logging.DEBUG
    if result.missing:
        level = logging.WARNING
    log.log(
        level,
        "ingest-logs %s: read %d lines in %d batches, wrote %d mail rows, %d rejections, "
        "%d message contexts in %.2f s%s",
        path,
        result.lines,
        result.batches,
        result.mail_rows,
        result.rejection_rows,
        result.contexts,
        result.seconds,
        notes,
    )


class _Cursor(NamedTuple):
    """Where ingestion is: the file (inode), the offset in it, and the hash of its first line
    (which copy of the log this is; "" while not known)."""

    inode: int
    position: int
    head: str


async def _lock_cursor(source: str) -> _Cursor:
    # Create the row first so that there is something to lock even on the very first run; a
    # second runner's INSERT waits for the first one's commit and then does nothing.
    await LogCursor.raw(
        "INSERT INTO log_cursors (source, inode, position, updated_at) VALUES ({}, 0, 0, now()) "
        "ON CONFLICT (source) DO NOTHING",
        source,
    )
    rows = await LogCursor.raw(
        "SELECT inode, position, head FROM log_cursors WHERE source = {} FOR UPDATE", source
    )
    return _Cursor(rows[0]["inode"], rows[0]["position"], rows[0]["head"])


async def _move_cursor(source: str, cursor: _Cursor) -> None:
    await LogCursor.raw(
        "UPDATE log_cursors SET inode = {}, position = {}, head = {}, updated_at = now() "
        "WHERE source = {}",
        cursor.inode,
        cursor.position,
        cursor.head,
        source,
    )


# --- the file -------------------------------------------------------------------------------


def _read_batch(
    path: Path,
    cursor: _Cursor,
    max_lines: int,
    node_id: str,
    known: dict[str, tuple],
    scrub: bool = False,
) -> _Read:
    """_read_next, the records of the lines it read, and what they write if `known` holds the
    context of every message they continue. Runs in a thread; reads `known`, never changes it."""
    read = _read_next(path, cursor, max_lines, scrub)
    read.records = logparse.Parser(dt.datetime.now().astimezone()).records(read.lines)
    read.continued = _continued(read.records)
    contexts, unknown = _known_contexts(read.continued, known)
    if not unknown:
        read.plan = _plan(node_id, read.records, contexts)
    return read


def _known_contexts(
    queue_ids: list[str], known: dict[str, tuple]
) -> tuple[dict[str, _Context], list[str]]:
    """The contexts of `queue_ids` that `known` holds, and the queue IDs it does not."""
    contexts = {qid: _Context(*known[qid]) for qid in queue_ids if qid in known}
    return contexts, [qid for qid in queue_ids if qid not in contexts]


def _read_next(path: Path, cursor: _Cursor, max_lines: int, scrub: bool = False) -> _Read:
    """Decide which file and offset the cursor means now, and read up to max_lines from there."""
    inode, position, head = cursor
    try:
        current: BinaryIO | None = path.open("rb")
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise IngestError(f"cannot read {path}: {exc.strerror}") from None
    try:
        stat = os.fstat(current.fileno()) if current else None
        if inode and (stat is None or stat.st_ino != inode):
            # The file was rotated (renamed away, a new one created). Lines written to the old
            # file after our cursor are still in it: finish it before starting the new one.
            old = _open_rotated(path, inode, position)
            if old is not None:
                with old:
                    lines, end = _read_lines(old, position, max_lines, scrub)
                if lines:
                    return _Read(inode, end, lines, head=head)
            if stat is None:  # the new file is not there yet: keep our place in the old one
                return _Read(inode, position, missing=True, head=head)
            if old is not None and stat.st_size == 0:
                # logrotate creates the new file before the writer is told to reopen: until
                # the first line arrives there, lines may still go to the old file.
                return _Read(inode, position, head=head)
            assert current is not None
            lines, end = _read_lines(current, 0, max_lines, scrub)
            return _Read(stat.st_ino, end, lines, rotated=True, head=_head(current))
        if stat is None:
            return _Read(inode, position, missing=True, head=head)
        assert current is not None
        if not inode:
            inode = stat.st_ino
        now_head = _head(current)
        truncated = lost_tail = False
        if head and now_head != head:
            # Another first line: copytruncate or an operator's `: > file`, seen even when the
            # file has grown past our place again since.
            truncated, position = True, 0
        elif stat.st_size < position:
            if head:
                # The same log, shorter: the kernel had not written its end to the disk when
                # the power went (Postfix never syncs it). Starting again at 0 would count every
                # line a second time; the lines after the cut are gone, and those written
                # since the reboot are skipped.
                lost_tail, position = True, _line_start(current, stat.st_size)
            else:  # a cursor from before the first line was kept
                truncated, position = True, 0
        lines, end = _read_lines(current, position, max_lines, scrub)
        return _Read(
            inode, end, lines, truncated=truncated, lost_tail=lost_tail, head=now_head or head
        )
    finally:
        if current is not None:
            current.close()


def _open_rotated(path: Path, inode: int, position: int) -> BinaryIO | None:
    """The rotated file that still has our inode: logrotate's `.1` (`.0`, dateext `-YYYYMMDD`),
    or `postfix logrotate`'s `.YYYYMMDD-HHMMSS` before it is compressed."""
    names = [f"{path.name}.1", f"{path.name}.0"]
    try:
        others = sorted(
            (
                entry.name
                for entry in os.scandir(path.parent)
                if entry.name.startswith((f"{path.name}.", f"{path.name}-"))
                and not entry.name.endswith(_COMPRESSED)
                and entry.name not in names
            ),
            reverse=True,  # date suffixes: newest first
        )
    except OSError:
        others = []
    for name in names + others:
        candidate = path.parent / name
        try:
            handle = candidate.open("rb")
        except OSError:
            continue
        stat = os.fstat(handle.fileno())
        # Same inode and at least as long as our position: the file we were reading (an inode
        # number reused by an unrelated, shorter file does not pass).
        if stat.st_ino == inode and stat.st_size >= position:
            return handle
        handle.close()
    return None


def _head(handle: BinaryIO) -> str:
    """The hash of the file's first line, once it is complete ("" before): which copy of the
    log this is, whatever has been appended to it since."""
    handle.seek(0)
    first = handle.readline(_HEAD_BYTES)
    if not first.endswith(b"\n"):
        return ""
    return hashlib.sha256(first).hexdigest()[:32]


def _line_start(handle: BinaryIO, offset: int) -> int:
    """The offset of the line that `offset` falls in (after the last newline before it)."""
    start = max(0, offset - _HEAD_BYTES)
    handle.seek(start)
    newline = handle.read(offset - start).rfind(b"\n")
    return start + newline + 1 if newline >= 0 else start


def _read_lines(
    handle: BinaryIO, position: int, max_lines: int, scrub: bool = False
) -> tuple[list[bytes], int]:
    """Up to max_lines complete lines from position; a last line without its newline is being
    written right now and waits for the next batch. With `scrub` a NUL becomes "?" (run_once:
    after PostgreSQL refused a batch with one)."""
    handle.seek(position)
    lines = list(itertools.islice(handle, max_lines))
    if lines and not lines[-1].endswith(b"\n"):  # only the file's last line can be partial
        lines.pop()
    if scrub:
        lines = [line.replace(b"\0", b"?") for line in lines]
    return lines, position + sum(map(len, lines))


# --- the database ---------------------------------------------------------------------------


async def _plan_with_stored(node_id: str, read: _Read, known: dict[str, tuple]) -> _Plan:
    """_plan with the contexts of the messages the batch continues: those this run knows, the
    others from log_messages (all of them in a run's first batch)."""
    contexts, unknown = _known_contexts(read.continued, known)
    contexts.update(await _load_contexts(node_id, unknown))
    return _plan(node_id, read.records, contexts)


def _plan(node_id: str, records: list[logparse.Record], contexts: dict[str, _Context]) -> _Plan:
    """What the records of one batch write, given the stored contexts of the messages it
    continues (`contexts`, which it changes)."""
    # What log_messages holds now: a context a batch only repeats (qmgr's line of each retry)
    # is not written again.
    stored = {qid: context.values() for qid, context in contexts.items()}
    changed: set[str] = set()
    mail = _MailRows(node_id)
    rejections: list[logparse.Record] = []
    expired: list[tuple[logparse.Record, _Context | None]] = []
    for record in records:  # the most frequent first
        kind, at, qid = record[:3]
        if kind == logparse.DELIVERY:
            if record[7] in MAIL_STATUSES:
                mail.add(record, contexts.get(qid))
        elif kind == logparse.QUEUE_ACTIVE:
            context = _context(contexts, qid, at)
            context.sender, context.size = record[3], record[4]
            changed.add(qid)
            mail.forget(qid)
        elif kind == logparse.CLIENT:
            # A new message: whatever an earlier message with this queue id left is not its.
            contexts[qid] = _Context(first_seen_at=at, client=record[3], sender=record[4] or "")
            changed.add(qid)
            mail.forget(qid)
        elif kind == logparse.MESSAGE_ID:
            _context(contexts, qid, at).message_id = record[3]
            changed.add(qid)
            mail.forget(qid)
        elif kind == logparse.EXPIRED:
            expired.append((record, contexts.get(qid)))
        else:
            rejections.append(record)

    known = {qid: context.values() for qid, context in contexts.items()}
    writes = sorted(qid for qid in changed if stored.get(qid) != known[qid])
    return _Plan(
        known=known,
        writes=len(writes),
        contexts=_context_data(node_id, writes, known),
        mail=mail,
        rejections=len(rejections),
        rejection_rows=_rejection_data(node_id, rejections),
        expired=len(expired),
        expired_columns=_expired_columns(expired),
        events=len(records),
    )


async def _write_batch(node_id: str, plan: _Plan, result: IngestResult) -> None:
    """Write one batch's plan; runs inside the caller's transaction."""
    if plan.writes:
        await _copy_upsert(
            "log_messages",
            _CONTEXT_COLUMNS,
            plan.contexts,
            " ON CONFLICT (node_id, queue_id) DO UPDATE SET message_id = EXCLUDED.message_id, "
            "sender = EXCLUDED.sender, size = EXCLUDED.size, client = EXCLUDED.client, "
            "first_seen_at = EXCLUDED.first_seen_at",
        )
    if plan.mail.count:
        await _copy("mail_logs", _MAIL_COLUMNS, plan.mail.data())
    # After this batch's deliveries: an expiry names no recipients, it ends those still
    # deferred, and their last deferral may be in this very batch.
    expired_rows = 0
    if plan.expired:
        inserted = await LogCursor.raw(_INSERT_EXPIRED, node_id, *plan.expired_columns, node_id)
        expired_rows = len(inserted)
    if plan.rejections:
        await _copy("rejection_logs", _REJECTION_COLUMNS, plan.rejection_rows)
    result.events += plan.events
    result.contexts += plan.writes
    result.mail_rows += plan.mail.count + expired_rows
    result.rejection_rows += plan.rejections


def _continued(records: Iterable[logparse.Record]) -> list[str]:
    """The queue IDs of messages that began before this batch: those with a record here before
    (or without) a client= line. A queue ID whose first record here is its client= line starts
    a new message, whatever log_messages holds under it; most of a batch's are such, and need
    no lookup. Runs in the thread that parses the batch."""
    first: dict[str, bool] = {}
    for record in records:
        kind, qid = record[0], record[2]
        if kind == logparse.CLIENT:
            first.setdefault(qid, False)
        elif kind != logparse.REJECT:
            first.setdefault(qid, True)
    return sorted(qid for qid, earlier in first.items() if earlier)


def _context(contexts: dict[str, _Context], qid: str, at: dt.datetime) -> _Context:
    context = contexts.get(qid)
    if context is None:  # its client= line was before our cursor's first run, or never logged
        context = contexts[qid] = _Context(first_seen_at=at)
    return context


async def _load_contexts(node_id: str, queue_ids: list[str]) -> dict[str, _Context]:
    if not queue_ids:
        return {}
    # A join with unnest() rather than `queue_id = ANY(...)`: the planner then uses the
    # (node_id, queue_id) index even while the table is young and without statistics (ANY()
    # took ten times longer there, scanning the table once per batch).
    rows = await LogCursor.raw(
        "SELECT m.queue_id, message_id, sender, size, client, first_seen_at "
        "FROM unnest({}::varchar[]) AS wanted (queue_id) "
        "JOIN log_messages AS m ON m.node_id = {} AND m.queue_id = wanted.queue_id",
        queue_ids,
        node_id,
    )
    return {
        row["queue_id"]: _Context(
            first_seen_at=row["first_seen_at"],
            message_id=row["message_id"],
            sender=row["sender"],
            size=row["size"],
            client=row["client"],
        )
        for row in rows
    }


_CONTEXT_COLUMNS = (
    "node_id",
    "queue_id",
    "message_id",
    "sender",
    "size",
    "client",
    "first_seen_at",
)
# In _MailRows' order: what a row takes from its message's context first.
_MAIL_COLUMNS = (
    "node_id",
    "queue_id",
    "message_id",
    "sender",
    "size",
    "client",
    "at",
    "recipient",
    "relay",
    "status",
    "delay_seconds",
    "dsn",
)
_REJECTION_COLUMNS = ("at", "node_id", "client", "sender", "recipient", "reason", "code")


def _connection() -> asyncpg.Connection:
    transaction = LogCursor._meta.db.current_transaction.get()
    assert transaction is not None, "runs inside run_once's transaction"
    return transaction.connection


async def _copy(table: str, columns: tuple[str, ...], data: bytes) -> None:
    """Rows into `table` by one binary COPY of `data` (pgcopy's format): it costs a quarter
    less than sending the columns as arrays for unnest() (both measured in one run), and a COPY
    into the partitioned parent is one statement, so the statement triggers (log totals) run
    once per batch."""
    await _connection().copy_to_table(table, source=_one(data), columns=columns, format="binary")


async def _copy_upsert(table: str, columns: tuple[str, ...], data: bytes, on_conflict: str) -> None:
    """Rows into `table` that may be there already (COPY cannot say ON CONFLICT): a binary COPY
    into this session's staging table, then one INSERT ... SELECT. Staging rows go at commit
    (or with a rollback)."""
    connection = _connection()
    # Table, columns and conflict clause are this module's constants, never input.
    names = ", ".join(columns)
    stage = f"ingest_{table}"
    await connection.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "  # noqa: S608
        f"SELECT {names} FROM {table} WITH NO DATA"
    )
    await _copy(stage, columns, data)
    await connection.execute(
        f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage}{on_conflict}"  # noqa: S608
    )


class _MailRows:
    """A batch's mail_logs rows (_MAIL_COLUMNS), as binary COPY data made while the plan is: in
    the thread that parses the batch, so that the event loop only sends them (asyncpg's
    encoding of the records was a third of the loop's time, while PostgreSQL waited for it).
    What repeats is encoded once, as one piece: a row's start up to its message's context (until
    the batch changes it: forget), its time, and its end from the relay on (relay, status,
    delay, dsn: a few dozen kinds in a batch of the bench log). A row is four pieces, three of
    them looked up; with each field looked up or encoded on its own, planning and encoding the
    bench log took 0.42 instead of 0.39 CPU s (one thread, six alternated runs)."""

    def __init__(self, node_id: str) -> None:
        self.count = 0
        self._parts: list[bytes] = []
        self._head = pgcopy.row_head(len(_MAIL_COLUMNS)) + pgcopy.text(node_id)
        self._messages: dict[str, bytes] = {}
        self._times: dict[dt.datetime, bytes] = {}
        self._ends: dict[tuple[str, str, float, str], bytes] = {}

    def add(self, record: logparse.Record, context: _Context | None) -> None:
        _, at, qid, recipient, relay, delay, dsn, status = record
        start = self._messages.get(qid)
        if start is None:
            context = context or _Context(first_seen_at=at)
            start = self._messages[qid] = b"".join(
                (
                    self._head,
                    pgcopy.text(qid),
                    pgcopy.text(context.message_id),
                    pgcopy.text(context.sender.lower()),
                    pgcopy.int8(context.size),
                    pgcopy.text(context.client),
                )
            )
        stamp = self._times.get(at)
        if stamp is None:
            stamp = self._times[at] = pgcopy.timestamptz(at)
        key = (relay, status, delay, dsn)
        end = self._ends.get(key)
        if end is None:
            end = self._ends[key] = b"".join(
                (pgcopy.text(relay), pgcopy.text(status), pgcopy.float8(delay), pgcopy.text(dsn))
            )
        self._parts += (start, stamp, pgcopy.text(recipient.lower()), end)
        self.count += 1

    def forget(self, qid: str) -> None:
        """The batch changed this message's context: its next rows take the new one."""
        self._messages.pop(qid, None)

    def data(self) -> bytes:
        return pgcopy.stream(self._parts)


# Per expiry, one `expired` row for each recipient whose last outcome was a deferral, with that
# deferral's relay and dsn (why the message never went out); one row without a recipient when
# we saw no deferral (the log starts later), so that the expiry still counts once. A short queue
# id can come back for another message: look no further back than this message's first line.
_INSERT_EXPIRED = (
    "INSERT INTO mail_logs (at, node_id, queue_id, message_id, sender, recipient, relay, status, "
    "delay_seconds, dsn, size, client) "
    "SELECT e.at, {}, e.queue_id, e.message_id, e.sender, coalesce(last.recipient, ''), "
    "coalesce(last.relay, ''), 'expired', e.delay, coalesce(last.dsn, ''), e.size, e.client "
    "FROM unnest({}::timestamptz[], {}::varchar[], {}::text[], {}::text[], {}::float8[], "
    "{}::bigint[], {}::text[], {}::timestamptz[]) "
    "AS e (at, queue_id, message_id, sender, delay, size, client, since) "
    "LEFT JOIN LATERAL ("
    " SELECT recipient, relay, dsn FROM ("
    "  SELECT DISTINCT ON (m.recipient) m.recipient, m.relay, m.dsn, m.status FROM mail_logs m"
    "  WHERE m.node_id = {} AND m.queue_id = e.queue_id AND m.at <= e.at"
    "  AND (e.since IS NULL OR m.at >= e.since)"
    "  ORDER BY m.recipient, m.at DESC, m.id DESC"
    " ) AS latest WHERE latest.status = 'deferred'"
    ") AS last ON true "
    "RETURNING id"
)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _expired_columns(expiries: list[tuple[logparse.Record, _Context | None]]) -> list[list]:
    """_INSERT_EXPIRED's arrays (after its node ID): per expiry its time, queue ID, context,
    delay and the time its message was first seen (which bounds the deferrals it ends)."""
    columns: list[list] = [[] for _ in range(8)]
    for (_, at, qid, sender), context in expiries:
        known = context or _Context(first_seen_at=at)
        values = (
            at,
            qid,
            known.message_id,
            sender.lower(),
            (at - context.first_seen_at).total_seconds() if context else None,
            known.size,
            known.client,
            context.first_seen_at if context else None,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _context_data(node_id: str, queue_ids: list[str], known: dict[str, tuple]) -> bytes:
    """log_messages rows (_CONTEXT_COLUMNS) of these contexts, as COPY data."""
    head = pgcopy.row_head(len(_CONTEXT_COLUMNS)) + pgcopy.text(node_id)
    rows: list[bytes] = []
    for qid in queue_ids:
        first_seen_at, message_id, sender, size, client = known[qid]
        rows += (
            head,
            pgcopy.text(qid),
            pgcopy.text(message_id),
            pgcopy.text(sender),
            pgcopy.int8(size),
            pgcopy.text(client),
            pgcopy.timestamptz(first_seen_at),
        )
    return pgcopy.stream(rows)


def _rejection_data(node_id: str, records: list[logparse.Record]) -> bytes:
    """rejection_logs rows (_REJECTION_COLUMNS) of these REJECT records, as COPY data."""
    head = pgcopy.row_head(len(_REJECTION_COLUMNS))
    node = pgcopy.text(node_id)
    rows: list[bytes] = []
    for _, at, _, client, sender, recipient, reason, code in records:
        rows += (
            head,
            pgcopy.timestamptz(at),
            node,
            pgcopy.text(client),
            pgcopy.text((sender or "").lower()),
            pgcopy.text((recipient or "").lower()),
            pgcopy.text(reason),
            pgcopy.int2(code),
        )
    return pgcopy.stream(rows)
