"""The freeze around a queue sync's copy: a copy is used only when Postfix stood still for all
of it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.agent import queuesync
from app.agent.queuesync import Freezer, SyncError, SyncReport
from app.replication import sync_mark


def test_a_cgroup_that_does_not_freeze_fails_the_run_and_is_thawed(tmp_path, monkeypatch):
    """A fake cgroup directory: a real cgroup refuses to freeze only while one of its tasks is
    in an uninterruptible wait (a hung disk), which cannot be made on purpose here."""
    monkeypatch.setattr(queuesync, "FREEZE_CONFIRM_SECONDS", 0.1)
    (tmp_path / "cgroup.freeze").write_text("0")
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    freezer = Freezer("none")
    freezer.mode, freezer.cgroup = "freeze", tmp_path
    with pytest.raises(SyncError, match=r"not frozen within 0\.1 s"):
        freezer.freeze()
    assert (tmp_path / "cgroup.freeze").read_text() == "1"
    freezer.thaw()  # what the failed run does next
    assert (tmp_path / "cgroup.freeze").read_text() == "0"


def test_a_copy_that_outlasts_the_watchdog_is_not_used(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(queuesync, "WATCHDOG_MARGIN_SECONDS", 0.0)
    freezer = Freezer("none")
    thawed_at: list[float] = []
    thaw = freezer.thaw
    monkeypatch.setattr(freezer, "thaw", lambda: thawed_at.append(time.monotonic()) or thaw())
    config = SimpleNamespace(marker=tmp_path / "marker")

    def slow_copy() -> tuple[int, int]:
        time.sleep(0.5)
        return 1, 1

    started = time.monotonic()
    with pytest.raises(SyncError, match="thawed before it ended"):
        queuesync._held(config, freezer, SyncReport("none"), 0.1, slow_copy)
    # The watchdog thawed while the copy ran; the copy's end thawed again (a no-op).
    assert thawed_at[0] - started < 0.4 and len(thawed_at) == 2
    # In time, the same copy is used.
    monkeypatch.setattr(queuesync, "WATCHDOG_MARGIN_SECONDS", 5.0)
    assert queuesync._held(config, freezer, SyncReport("none"), 0.1, slow_copy) == (1, 1)


def test_the_sigstop_fallback_returns_only_once_every_process_has_stopped(monkeypatch):
    """A real process; that one stuck in a disk wait does not stop in time is shown with a
    stand-in for its /proc state (a disk wait cannot be made on purpose here)."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        monkeypatch.setattr(queuesync, "_postfix_pids", lambda: [child.pid])
        freezer = Freezer("none")
        freezer.mode = "freeze"
        freezer.freeze()
        assert queuesync._process_state(child.pid) == "T"
        freezer.thaw()
        monkeypatch.setattr(queuesync, "FREEZE_CONFIRM_SECONDS", 0.1)
        monkeypatch.setattr(queuesync, "_process_state", lambda pid: "D")
        with pytest.raises(SyncError, match=rf"processes {child.pid} did not stop within 0\.1 s"):
            freezer.freeze()
        freezer.thaw()
    finally:
        child.kill()
        child.wait()


class PeerRsync:
    """Stands in for rsync to the peer (ssh to a second node needs the lab: tests/lab runs the
    real one) and records what each call would have shipped; a local rsync runs for real."""

    def __init__(self, marker: Path, fail_first: bool = False) -> None:
        self.marker = marker
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail_first = fail_first
        self.run = subprocess.run

    def __call__(self, command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if "-e" not in command:
            return self.run(command, **kwargs)  # type: ignore[call-overload]
        mark = self.marker.read_text() if self.marker.exists() else None
        self.calls.append((command, mark))
        code = 12 if self.fail_first and len(self.calls) == 1 else 0
        return subprocess.CompletedProcess(command, code, "", "broken pipe" if code else "")


def peer_config(tmp_path: Path) -> queuesync.SyncConfig:
    spool = tmp_path / "spool"
    (spool / "incoming" / "A").mkdir(parents=True)
    (spool / "incoming" / "A" / "4ZcommittedA").write_bytes(b"done")
    (spool / "incoming" / "A" / "4ZcommittedA").chmod(0o700)
    (spool / "hold").mkdir()
    (spool / "hold" / "4ZstillOpenA").write_bytes(b"half")
    (spool / "hold" / "4ZstillOpenA").chmod(0o600)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("198.18.0.12 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedPeerKey\n")
    return queuesync.SyncConfig(
        peer="198.18.0.12",
        ssh_key=tmp_path / "key",
        spool=spool,
        known_hosts=known_hosts,
        marker=tmp_path / "agent" / sync_mark.NAME,
    )


def test_the_mark_goes_alone_and_only_after_its_copy_reached_the_peer(tmp_path, monkeypatch):
    config = peer_config(tmp_path)
    rsync = PeerRsync(config.marker)
    monkeypatch.setattr(queuesync.subprocess, "run", rsync)
    before = time.monotonic()
    report = queuesync.sync(config, "none")
    assert report.ok, report.error
    [(queue_copy, _), (mark_copy, shipped)] = rsync.calls
    assert str(config.marker) not in queue_copy
    assert mark_copy[-2:] == [str(config.marker), "mailrelay-sync@198.18.0.12:/"]
    mark = json.loads(shipped or "")
    assert mark["boot"] == sync_mark.boot_id() and before < mark["mono"] < time.monotonic()
    assert mark["pending"] == ["4ZstillOpenA"]  # an uncommitted file in hold/ too


def test_the_mark_of_a_run_whose_copy_failed_is_never_shipped(tmp_path, monkeypatch):
    config = peer_config(tmp_path)
    rsync = PeerRsync(config.marker, fail_first=True)
    monkeypatch.setattr(queuesync.subprocess, "run", rsync)
    failed = queuesync.sync(config, "none")
    assert not failed.ok and "broken pipe" in failed.error
    assert len(rsync.calls) == 1  # the copy failed: no mark follows it
    stale = config.marker.read_text()
    # The next run's first copy (here the live one) carries no mark, stale or new.
    report = queuesync.sync(config, "none")
    assert report.ok
    [_failed, (queue_copy, _), (mark_copy, shipped)] = rsync.calls
    assert str(config.marker) not in queue_copy and str(config.marker) in mark_copy
    assert shipped is not None and shipped != stale
