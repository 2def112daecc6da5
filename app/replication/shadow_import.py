"""Promotion's second step: inject each shadow the replica does not cover into the live queue,
treating the shadow store as untrusted input (the peer decided what is in it).

Only regular files directly in the store are read, opened without following links, with one
link, owned by the store's owner and within the size cap; the envelope must parse and its
sender be in a sender domain of the live sender_access map. A shadow whose queue ID is in the
replica is covered by it and dropped. Each other one is handed to `sendmail -G -i -f SENDER --
RECIPIENTS` (a gateway submission: the headers stay as the client sent them; pickup gives it a
new queue ID), and its file goes only after sendmail succeeded. Refused shadows stay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from app.agent import queuefile
from app.agent.replica import Report
from app.replication.shadow_store import QUEUE_ID, ShadowFormatError, decode

log = logging.getLogger("mailrelay.shadow.import")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Inject = Callable[[str, list[str], bytes], None]


def sendmail(sender: str, recipients: list[str], message: bytes) -> None:
    """Postfix's sendmail as a gateway submission (-G: no header rewriting as for a local
    user), -i: a line with a single dot is not the end."""
    result = subprocess.run(
        ["sendmail", "-G", "-i", "-f", sender, "--", *recipients],
        input=message.replace(b"\r\n", b"\n"),
        capture_output=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise OSError(f"sendmail failed: {result.stderr.decode(errors='replace').strip()}")


def import_shadows(
    store: Path,
    covered: set[str],
    allowed: frozenset[str],
    max_file_bytes: int,
    inject: Inject = sendmail,
) -> Report:
    report = Report()
    try:
        root = os.open(store, _DIR_FLAGS)
    except FileNotFoundError:
        return report
    except OSError as exc:
        report.refuse(str(store), f"not a directory ({exc.strerror})")
        return report
    try:
        owner = os.fstat(root).st_uid
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            if name.startswith("."):
                continue  # a write the receiver never confirmed
            _one(root, name, owner, covered, allowed, max_file_bytes, inject, report)
    finally:
        os.close(root)
    log.info(
        "shadow import: %d injected, %d refused (left in %s)",
        len(report.imported),
        report.refused_total,
        store,
    )
    return report


def _one(
    root: int,
    name: str,
    owner: int,
    covered: set[str],
    allowed: frozenset[str],
    max_file_bytes: int,
    inject: Inject,
    report: Report,
) -> None:
    where = f"shadow/{name}"
    if not QUEUE_ID.fullmatch(name):
        report.refuse(where, "not a queue ID")
        return
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=root)
    except FileNotFoundError:
        return  # the receiver pruned it meanwhile: a queue sync covered it
    except OSError as exc:
        report.refuse(where, f"cannot open without following links ({exc.strerror})")
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_nlink != 1:
            problem = f"has {st.st_nlink} hard links"
        elif st.st_uid != owner:
            problem = f"owned by uid {st.st_uid}, not by the store's owner {owner}"
        elif st.st_size > max_file_bytes:
            problem = f"larger than {max_file_bytes} bytes"
        else:
            problem = ""
        if problem:
            report.refuse(where, problem)
            return
        data = os.read(fd, max_file_bytes + 1)
    finally:
        os.close(fd)
    try:
        envelope, message = decode(data)
    except ShadowFormatError as exc:
        report.refuse(where, str(exc))
        return
    if envelope.queue_id != name:
        report.refuse(where, f"its envelope names another queue ID {envelope.queue_id}")
        return
    if name in covered:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=root)
        return
    domain = queuefile.sender_domain(envelope.sender)
    if domain is None or domain not in allowed:
        report.refuse(where, f"sender <{envelope.sender[:200]}> is not in an allowed sender domain")
        return
    inject(envelope.sender, envelope.recipients, message)
    report.imported.append(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=root)


def replica_names(replica: Path, parts: tuple[str, ...]) -> set[str]:
    """The queue IDs the replica holds (names only; nothing is opened or followed)."""
    names: set[str] = set()
    for part in parts:
        for _dir, _subdirs, files in os.walk(replica / part):
            names.update(files)
    return names
