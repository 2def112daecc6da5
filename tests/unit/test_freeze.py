"""The freeze around a queue sync's copy: a copy is used only when Postfix stood still for all
of it."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.agent import queuesync
from app.agent.queuesync import Freezer, SyncError, SyncReport


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
