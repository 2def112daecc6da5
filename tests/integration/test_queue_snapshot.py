"""freeze mode's frozen pass (app.agent.snapshot) against a real queue tree and real rsync.

The tree has Postfix's layout (hashed subdirectories, the logs, pid/ and public/ that are never
copied). The bulk pass is the agent's own rsync call. Between the record and the frozen pass the
test does to the queue what Postfix does: new files, appends, a rewrite that keeps size and
mtime, a chmod when cleanup finishes a file, a move from active to deferred with a new retry
time, deletions.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app.agent import queuesync, snapshot
from app.agent.queuesync import QUEUE_PARTS, SyncConfig

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")


def write(path: Path, data: bytes, mode: int = 0o700, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every regular file under the queue parts: content, mode and mtime."""
    found = {}
    for part in QUEUE_PARTS:
        for path in (root / part).rglob("*"):
            if path.is_file():
                st = path.stat()
                found[str(path.relative_to(root))] = (
                    path.read_bytes(),
                    st.st_mode & 0o7777,
                    st.st_mtime_ns,
                )
    return found


@pytest.fixture
def queue(tmp_path: Path) -> tuple[Path, Path]:
    spool, snap = tmp_path / "spool", tmp_path / "snapshot"
    for index in range(60):
        write(spool / "deferred" / f"{index % 8:X}" / f"4Xd{index:07d}", b"D" * (500 + index))
    for index in range(10):
        write(spool / "active" / f"4Xa{index:07d}", b"A" * 300)
    write(spool / "incoming" / "4Xincoming01", b"half", mode=0o600)
    write(spool / "hold" / "4Xheld000001", b"H" * 100)
    write(spool / "defer" / "3" / "4Xd0000003", b"deferred: one\n", mode=0o600)
    write(spool / "pid" / "master.pid", b"123")
    (spool / "public").mkdir()
    snap.mkdir(mode=0o700)
    # An earlier run's snapshot: a file that has left the queue since.
    write(snap / "deferred" / "9" / "4Xgone000001", b"gone")
    return spool, snap


def bulk(spool: Path, snap: Path) -> snapshot.Record:
    """The record, then the agent's bulk rsync; the record is dated back so that the queue
    files written by the fixture just now are outside its safety margin."""
    before = snapshot.record(spool, QUEUE_PARTS)
    before.taken_ns += 2 * snapshot._MARGIN_NS
    config = SyncConfig(peer="198.18.0.12", ssh_key=Path("/nonexistent"), spool=spool)
    queuesync._rsync(config, spool, 60, local=snap)
    return before


def test_the_frozen_pass_copies_only_what_changed_and_ends_equal_to_the_queue(queue):
    spool, snap = queue
    before = bulk(spool, snap)
    assert tree(snap) == tree(spool)

    # What Postfix does while the bulk pass runs and until the freeze:
    with open(spool / "defer" / "3" / "4Xd0000003", "ab") as log:
        log.write(b"deferred: two\n")  # the defer log grows
    write(spool / "incoming" / "4Xincoming01", b"done", mode=0o700)  # cleanup finished it
    same = spool / "deferred" / "1" / "4Xd0000001"
    st = same.stat()
    same.write_bytes(b"d" * st.st_size)  # recipients marked done: same size ...
    os.utime(same, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime
    (spool / "hold" / "4Xheld000001").chmod(0o600)
    moved = spool / "active" / "4Xa0000002"
    retry = 2_000_000_000
    os.utime(moved, (retry, retry))
    (spool / "deferred" / "F").mkdir(mode=0o700)
    moved.rename(spool / "deferred" / "F" / "4Xa0000002")  # deferred, next retry in the future
    (spool / "active" / "4Xa0000003").unlink()  # delivered
    write(spool / "incoming" / "4Xnew0000001", b"new")

    done = snapshot.update(spool, snap, before, QUEUE_PARTS)

    assert tree(snap) == tree(spool)
    # Exactly the six changed or new files, not the other 66.
    changed = [
        "defer/3/4Xd0000003",
        "incoming/4Xincoming01",
        "deferred/1/4Xd0000001",
        "hold/4Xheld000001",
        "deferred/F/4Xa0000002",
        "incoming/4Xnew0000001",
    ]
    assert (done.files, done.bytes) == (6, sum((spool / name).stat().st_size for name in changed))
    assert (snap / "deferred" / "F" / "4Xa0000002").stat().st_mtime == retry
    assert (snap / "deferred" / "F").stat().st_mode & 0o7777 == 0o700
    assert not (snap / "deferred" / "9" / "4Xgone000001").exists()
    assert not (snap / "pid").exists() and not (snap / "public").exists()
    assert not (snap / ".copying").exists()


def test_a_quiet_queue_copies_nothing_under_the_freeze(queue):
    spool, snap = queue
    before = bulk(spool, snap)
    done = snapshot.update(spool, snap, before, QUEUE_PARTS)
    assert (done.files, done.bytes) == (0, 0)
    assert tree(snap) == tree(spool)


def test_a_file_the_bulk_pass_missed_is_copied(queue):
    """A file recorded before the bulk pass but absent from the snapshot (it was being renamed
    while rsync listed its directory) is copied under the freeze, even though unchanged."""
    spool, snap = queue
    before = bulk(spool, snap)
    (snap / "hold" / "4Xheld000001").unlink()
    done = snapshot.update(spool, snap, before, QUEUE_PARTS)
    assert (done.files, done.bytes) == (1, 100)
    assert tree(snap) == tree(spool)


def test_a_run_that_died_mid_copy_leaves_nothing_that_is_shipped(queue):
    spool, snap = queue
    before = bulk(spool, snap)
    write(snap / ".copying" / "4Xd0000001", b"torn")
    snapshot.update(spool, snap, before, QUEUE_PARTS)
    assert not (snap / ".copying").exists()
    assert tree(snap) == tree(spool)


def test_a_file_changed_in_the_records_own_clock_tick_is_copied_again(queue):
    """Timestamps are coarse (a clock tick): a write just after the record's stat may leave
    the ctime as recorded. Files that recent are never taken as unchanged."""
    spool, snap = queue
    before = snapshot.record(spool, QUEUE_PARTS)  # not dated back: every file is that recent
    queuesync._rsync(
        SyncConfig(peer="198.18.0.12", ssh_key=Path("/nonexistent"), spool=spool),
        spool,
        60,
        local=snap,
    )
    done = snapshot.update(spool, snap, before, QUEUE_PARTS)
    assert done.files == len(tree(spool))
    assert tree(snap) == tree(spool)


def test_the_catch_up_record_vouches_for_the_frozen_pass(queue):
    """The agent's chain: record, bulk, catch-up while Postfix runs, frozen pass with the
    catch-up's record. The frozen pass copies only what changed after the catch-up."""
    spool, snap = queue
    before = bulk(spool, snap)
    write(spool / "incoming" / "4Xnew0000001", b"during the bulk")
    caught_up = snapshot.update(spool, snap, before, QUEUE_PARTS)
    assert caught_up.files == 1
    caught_up.seen.taken_ns += 2 * snapshot._MARGIN_NS
    with open(spool / "active" / "4Xa0000001", "ab") as queue_file:
        queue_file.write(b"during the catch-up")
    frozen = snapshot.update(spool, snap, caught_up.seen, QUEUE_PARTS)
    assert (frozen.files, frozen.bytes) == (1, 300 + len(b"during the catch-up"))
    assert tree(snap) == tree(spool)


def test_a_sync_to_a_peer_whose_host_key_is_not_pinned_is_refused(queue, tmp_path):
    """No trust on first use: without the peer's host key in the pinned known_hosts file
    (written by install-node from SYNC_PEER_HOST_KEY) the agent does not connect at all."""
    spool, _snap = queue
    pinned = tmp_path / "sync_known_hosts"
    config = SyncConfig(
        peer="198.18.0.12", ssh_key=Path("/nonexistent"), spool=spool, known_hosts=pinned
    )
    report = queuesync.sync(config, "none")
    assert not report.ok and report.passes == []
    assert report.error.startswith(f"the peer's ssh host key is not pinned ({pinned}: ")
    assert "SYNC_PEER_HOST_KEY" in report.error

    pinned.write_text("198.18.0.99 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherHostsKey\n")
    report = queuesync.sync(config, "none")
    assert report.error.startswith(f"{pinned} pins no host key for the peer 198.18.0.12")

    ssh = queuesync._ssh(config)
    assert "-o StrictHostKeyChecking=yes" in ssh and f"-o UserKnownHostsFile={pinned}" in ssh
    assert "accept-new" not in ssh
