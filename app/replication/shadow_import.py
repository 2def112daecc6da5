"""Promotion's second step: inject each shadow the replica does not cover into the live queue,
treating the shadow store as untrusted input (the peer decided what is in it).

Only regular segment files directly in the store are read (app/replication/shadow_store.py),
opened without following links, with one link and owned by the store's owner; each message
within the size cap, each envelope must parse and its sender be in a sender domain of the live
sender_access map. A shadow the last sync's mark covers (app/replication/sync_mark.py), or
whose queue ID is in the replica, is covered by it and dropped; so is a second copy of a queue
ID. Each other one is handed to `sendmail -G -i -f SENDER -- RECIPIENTS` (a gateway
submission: the headers stay as the client sent them; pickup gives it a new queue ID), with the
client's DSN and body requests (`submissions`), INJECT_AT_ONCE at a time. A segment goes once
every shadow in it was injected or covered; one with anything refused is renamed
`refused-<name>` and kept for the operator, never read again (its accepted shadows are in the
queue already).

A segment the receiver still appends to is read to its end as it is then: a shadow stored after
that is of mail the old active node still had when this one took over, which that node keeps
(its reconcile deletes only the queue IDs taken over here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from app.agent import queuefile
from app.agent.replica import Report
from app.replication.shadow_store import (
    READ_FLAGS,
    REFUSED_PREFIX,
    Envelope,
    Record,
    is_segment,
    records,
)
from app.replication.sync_mark import Coverage

log = logging.getLogger("mailrelay.shadow.import")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Inject = Callable[[Envelope, bytes], None]


def submissions(envelope: Envelope) -> list[list[str]]:
    """The sendmail command lines that queue the message as the client handed it in: a gateway
    submission (-G: no header rewriting as for a local user; -i: a line with a single dot is
    not the end) with the client's ESMTP requests. sendmail takes one NOTIFY for all its
    recipients, so recipients that asked differently go in separate submissions."""
    requests = envelope.requests
    options = ["-G", "-i"]
    if requests.ret:
        options += ["-R", requests.ret.lower()]
    if len(requests.envid) == 2:
        # Postfix's sendmail reads -V with two characters as its old VERP option (-XV), and
        # everything after it as recipients: such an ENVID cannot be passed on.
        log.warning("%s: the client's ENVID %r is not kept", envelope.queue_id, requests.envid)
    elif requests.envid:
        options += ["-V", requests.envid]
    if requests.body:
        options += ["-B", requests.body]
    if requests.smtputf8:
        # Postfix's sendmail has no -SMTPUTF8. It marks a submission whose envelope or headers
        # hold UTF-8 by itself (smtputf8_autodetect_classes); from Postfix 3.11 on this option
        # says so outright, and before it is accepted and ignored.
        options += ["-O", "smtputf8=yes"]
    by_notify: dict[str, list[str]] = {}
    for recipient, notify in zip(
        envelope.recipients, requests.notify or [""] * len(envelope.recipients), strict=True
    ):
        by_notify.setdefault(notify, []).append(recipient)
    return [
        ["sendmail", *options, *(["-N", notify.lower()] if notify else []),
         "-f", envelope.sender, "--", *recipients]
        for notify, recipients in by_notify.items()
    ]  # fmt: skip


def sendmail(envelope: Envelope, message: bytes) -> None:
    for command in submissions(envelope):
        try:
            result = subprocess.run(
                command,
                input=message.replace(b"\r\n", b"\n"),
                capture_output=True,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise OSError("sendmail did not finish within 120 s") from None
        if result.returncode != 0:
            raise OSError(f"sendmail failed: {result.stderr.decode(errors='replace').strip()}")


# Shadows handed to sendmail at the same time. One after another, each took 12 to 16 ms
# (sendmail, postdrop, then pickup and cleanup): 20 s for the 1,500 shadows a crash at 300
# messages a second can leave, and a switchover waits 30 s at most for the peer's import.
# Four to sixteen at once took 7 to 10 ms each on two cores (pickup takes them one by one).
INJECT_AT_ONCE = 8


@dataclass
class _Import:
    covered: set[str]
    coverage: Coverage | None
    allowed: frozenset[str]
    max_file_bytes: int
    inject: Inject
    write_down: Callable[[list[str]], object]
    pool: ThreadPoolExecutor
    report: Report = field(default_factory=Report)
    done: set[str] = field(default_factory=set)


def import_shadows(
    store: Path,
    covered: set[str],
    coverage: Coverage | None,
    allowed: frozenset[str],
    max_file_bytes: int,
    inject: Inject = sendmail,
    write_down: Callable[[list[str]], object] = lambda ids: None,
) -> Report:
    """`covered`: the queue IDs whose messages are in the queue already (the replica's import
    took them, or an earlier try of this import injected their shadows); `coverage`: what the
    last sync's mark covers (None: no sync is known); `write_down(ids)`
    records durably what a segment injected, before the segment goes. A failed injection ends
    the import: the report then says why, and lists what was injected before."""
    with ThreadPoolExecutor(INJECT_AT_ONCE, thread_name_prefix="inject") as pool:
        work = _Import(covered, coverage, allowed, max_file_bytes, inject, write_down, pool)
        return _import(store, work)


def _import(store: Path, work: _Import) -> Report:
    try:
        root = os.open(store, _DIR_FLAGS)
    except FileNotFoundError:
        return work.report
    except OSError as exc:
        work.report.refuse(str(store), f"not a directory ({exc.strerror})")
        return work.report
    try:
        owner = os.fstat(root).st_uid
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            if name.startswith((".", REFUSED_PREFIX)):
                continue  # a write never confirmed, or refused at an earlier promotion
            _segment(root, name, owner, work)
            if work.report.error:
                break
        os.fsync(root)  # the segments that went stay gone after a power cut
    finally:
        os.close(root)
    log.info(
        "shadow import: %d injected, %d refused (kept in %s)%s",
        len(work.report.imported),
        work.report.refused_total,
        store,
        f"; stopped: {work.report.error}" if work.report.error else "",
    )
    return work.report


def _segment(root: int, name: str, owner: int, work: _Import) -> None:
    where = f"shadow/{name}"
    if not is_segment(name):
        work.report.refuse(where, "not a shadow segment")
        return
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=root)
    except FileNotFoundError:
        return  # the receiver pruned it meanwhile: a queue sync covered it
    except OSError as exc:
        work.report.refuse(where, f"cannot open without following links ({exc.strerror})")
        return
    refused = False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_nlink != 1:
            problem = f"has {st.st_nlink} hard links"
        elif st.st_uid != owner:
            problem = f"owned by uid {st.st_uid}, not by the store's owner {owner}"
        else:
            problem = ""
        if problem:
            work.report.refuse(where, problem)
            return
        injections: list[tuple[str, Future[None]]] = []
        for record in records(fd, work.max_file_bytes):
            outcome = _one(record, where, work)
            if isinstance(outcome, bool):
                refused |= not outcome
            else:
                injections.append((outcome[0].queue_id, work.pool.submit(work.inject, *outcome)))
        # Reported in the segment's order once each is in the queue. A failure ends the
        # import here and leaves its segment for the next try: the shadows not begun yet are
        # not begun, and those that went in are reported (the next try counts them as
        # covered, and the returning peer deletes them).
        for _queue_id, injection in injections:
            if injection.exception() is not None:
                for _queue_id, pending in injections:
                    pending.cancel()
                break
        injected = []
        for queue_id, injection in injections:
            if injection.cancelled():
                continue
            failure = injection.exception()
            if failure is None:
                injected.append(queue_id)
            elif not work.report.error:
                work.report.error = f"injecting the shadow of {queue_id} failed: {failure}"
        work.report.imported += injected
        try:
            work.write_down(injected)
        except OSError as exc:
            # They are in the queue and in the answer; only a later try would not know them.
            work.report.error = work.report.error or f"cannot write down what went in: {exc}"
        if work.report.error:
            return
    finally:
        os.close(fd)
    if refused:
        os.rename(name, REFUSED_PREFIX + name, src_dir_fd=root, dst_dir_fd=root)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=root)


def _one(record: Record, where: str, work: _Import) -> tuple[Envelope, bytes] | bool:
    """A record's envelope and message to inject; True when it is covered, False when it is
    refused."""
    envelope, message = record.envelope, record.message
    if envelope is None or message is None:
        work.report.refuse(where, record.problem)
        return False
    queue_id = envelope.queue_id
    if work.coverage is not None and work.coverage.covers(queue_id, envelope.moment):
        return True
    if queue_id in work.covered or queue_id in work.done:
        return True
    domain = queuefile.sender_domain(envelope.sender)
    if domain is None or domain not in work.allowed:
        work.report.refuse(
            f"{where}/{queue_id}",
            f"sender <{envelope.sender[:200]}> is not in an allowed sender domain",
        )
        return False
    work.done.add(queue_id)
    return envelope, message
