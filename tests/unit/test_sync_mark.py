"""The sync mark (app/replication/sync_mark.py): which shadows the peer's last snapshot covers,
whatever the wall clock did, and what the receiver makes of a mark it cannot trust.

The clocks here are numbers in envelopes and marks: stepping this machine's clock is not for a
test. That the milter and the agent stamp the real clocks is shown with the real Postfix
(tests/integration/test_shadow_postfix.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from app.replication import shadow_store, sync_mark
from app.replication.shadow_import import import_shadows
from app.replication.shadow_receiver import Receiver
from app.replication.shadow_store import Envelope, ShadowFormatError, ShadowStore
from app.replication.sync_mark import Moment, SyncMark
from tests.unit.test_shadow_copies import TOKEN, inject_into, segments, stored_ids

BOOT = "0b2f9c4e-6f57-4d1e-9a43-5d9b6c1e2f10"
LATER_BOOT = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
# A snapshot at monotonic 110 in which the queue file of 4ZstalledAA1 was not committed yet.
STALLED_IN_SNAPSHOT = SyncMark(Moment(200.0, BOOT, 110.0), frozenset({"4ZstalledAA1"}))


def shadow(queue_id: str, wall: float, boot: str = BOOT, mono: float | None = None) -> Envelope:
    return Envelope(
        queue_id, "a@ex.example", ["b@dest.example"], "192.0.2.1", wall, boot=boot, mono=mono
    )


@pytest.fixture
def store(tmp_path, monkeypatch) -> ShadowStore:
    monkeypatch.setattr(shadow_store, "SEGMENT_SECONDS", 0.0)  # a segment per shadow
    return ShadowStore(tmp_path / "s", 1 << 20)


def receiver(store: ShadowStore, mark: Path) -> Receiver:
    return Receiver(store, TOKEN, 1 << 20, mark, copy_timeout=2.0)


def pruned(store: ShadowStore, tmp_path: Path, mark: SyncMark | str) -> int:
    """How many shadows one prune drops under `mark`, written as a sync writes it (or as the
    text of an earlier release's mark)."""
    path = tmp_path / sync_mark.NAME
    if isinstance(mark, str):
        path.write_text(mark)
    else:
        sync_mark.write(path, mark)
    return receiver(store, path).prune_once()


def test_a_step_of_the_wall_clock_neither_drops_nor_keeps_the_wrong_shadows(store, tmp_path):
    """The snapshot began at 10:00:00 (wall 36000) at monotonic 500. Then the clock was stepped
    back an hour: a message after the snapshot got wall 32400 (by the wall clock long before
    the snapshot), and was in no snapshot. Before it, one stepped forward: a message from
    before the snapshot has a wall time after it."""
    store.put(shadow("4ZbeforeAAA1", 39600.0, mono=400.0), b"in the snapshot")
    store.put(shadow("4ZafterAAAA1", 32400.0, mono=501.0), b"in no snapshot")
    assert pruned(store, tmp_path, SyncMark(Moment(36000.0, BOOT, 500.0))) == 1
    assert stored_ids(tmp_path / "s") == ["4ZafterAAAA1"]


def test_a_queue_file_not_committed_in_the_snapshot_keeps_its_shadow(store, tmp_path):
    store.put(shadow("4ZstalledAA1", 100.0, mono=10.0), b"cleanup had not committed it")
    store.put(shadow("4ZdoneAAAAA1", 100.0, mono=10.0), b"committed")
    assert pruned(store, tmp_path, STALLED_IN_SNAPSHOT) == 1
    assert stored_ids(tmp_path / "s") == ["4ZstalledAA1"]
    # The takeover: the replica's copy of it was skipped as incomplete, so the shadow goes in.
    delivered: list[tuple[str, list[str], bytes]] = []
    report = import_shadows(
        tmp_path / "s", set(), sync_mark.read(tmp_path / sync_mark.NAME, 2.0),
        frozenset({"ex.example"}), 1 << 20,
        inject_into(delivered),
    )  # fmt: skip
    assert report.imported == ["4ZstalledAA1"] and len(delivered) == 1


def test_the_next_snapshot_after_the_commit_covers_the_shadow(store, tmp_path):
    store.put(shadow("4ZstalledAA1", 100.0, mono=10.0), b"m")
    assert pruned(store, tmp_path, STALLED_IN_SNAPSHOT) == 0
    assert pruned(store, tmp_path, SyncMark(Moment(205.0, BOOT, 115.0))) == 1


def test_shadows_of_another_boot_or_release_are_judged_by_the_wall_clock(store, tmp_path):
    """Monotonic times of two boots do not compare: the copy's timeout and the slack apply."""
    copy_timeout_and_slack = 2.0 + sync_mark.PRUNE_SLACK_SECONDS
    store.put(shadow("4ZoldBootAA1", 1000.0 - copy_timeout_and_slack - 0.1, mono=9e9), b"m")
    store.put(shadow("4ZoldBootAA2", 1000.0 - copy_timeout_and_slack + 0.1, mono=0.0), b"m")
    store.put(shadow("4ZnoBootAAA1", 990.0, boot=""), b"an earlier release's shadow")
    assert pruned(store, tmp_path, SyncMark(Moment(1000.0, LATER_BOOT, 5.0))) == 2
    assert stored_ids(tmp_path / "s") == ["4ZoldBootAA2"]


def test_an_earlier_releases_mark_is_its_wall_time(store, tmp_path):
    store.put(shadow("4ZoldAAAAAA1", 100.0, mono=1e9), b"m")
    store.put(shadow("4ZnewAAAAAA1", 158.0, mono=0.0), b"m")
    assert pruned(store, tmp_path, "160.000\n") == 1
    assert stored_ids(tmp_path / "s") == ["4ZnewAAAAAA1"]


def hostile_marks(tmp_path: Path) -> dict[str, Path]:
    good = SyncMark(Moment(1e12, BOOT, 1e12))
    marks = {}
    too_many = [f"4Z{i:010d}" for i in range(sync_mark.MAX_PENDING + 1)]
    for name, text in {
        "not JSON": "{",
        "NaN": "NaN",
        "infinite": '{"time": 1e999, "boot": "", "mono": null, "pending": []}',
        "a boot ID no kernel gives": json.dumps(
            {"time": 1e12, "boot": "../../x", "mono": 1e12, "pending": []}
        ),
        "a boot without its monotonic time": json.dumps(
            {"time": 1e12, "boot": BOOT, "mono": None, "pending": []}
        ),
        "a pending name that is no queue ID": json.dumps(
            {"time": 1e12, "boot": BOOT, "mono": 1e12, "pending": ["../active/x"]}
        ),
        "too many pending": json.dumps(
            {"time": 1e12, "boot": BOOT, "mono": 1e12, "pending": too_many}
        ),
        "true as a time": "true",
    }.items():
        marks[name] = tmp_path / f"mark-{len(marks)}"
        marks[name].write_text(text)
    outside = tmp_path / "outside-mark"
    sync_mark.write(outside, good)
    marks["a link"] = tmp_path / "mark-link"
    marks["a link"].symlink_to(outside)
    marks["a FIFO"] = tmp_path / "mark-fifo"
    os.mkfifo(marks["a FIFO"])
    marks["missing"] = tmp_path / "mark-missing"
    return marks


def test_a_mark_that_cannot_be_trusted_drops_nothing(store, tmp_path):
    store.put(shadow("4ZkeptAAAAA1", 1.0, mono=1.0), b"m")
    for problem, mark in hostile_marks(tmp_path).items():
        started = time.monotonic()
        assert sync_mark.read(mark, 2.0) is None, problem
        assert receiver(store, mark).prune_once() == 0, problem
        assert time.monotonic() - started < 5, problem  # a FIFO does not block the receiver
    assert stored_ids(tmp_path / "s") == ["4ZkeptAAAAA1"]


def test_an_envelope_keeps_its_clocks_and_refuses_malformed_ones():
    sent = shadow("4ZclocksAAA1", 100.5, mono=12.25)
    assert Envelope.from_dict(sent.as_dict()) == sent
    assert sent.moment == Moment(100.5, BOOT, 12.25)
    assert "boot" not in shadow("4ZnoBootAAA1", 1.0, boot="").as_dict()
    malformed = [
        {"boot": "x"},
        {"boot": BOOT, "mono": None},
        {"boot": BOOT, "mono": "1"},
        {"boot": BOOT, "mono": float("nan")},
        {"boot": 7, "mono": 1.0},
    ]
    for bad in malformed:
        with pytest.raises(ShadowFormatError):
            Envelope.from_dict(sent.as_dict() | bad)


def test_a_restarted_receiver_judges_its_segments_as_before(store, tmp_path):
    store.put(shadow("4ZstalledAA1", 100.0, mono=10.0), b"m")
    store.put(shadow("4ZafterAAAA1", 50.0, mono=200.0), b"m")
    store.close_old(float("inf"))
    again = ShadowStore(tmp_path / "s", 1 << 20)
    assert pruned(again, tmp_path, STALLED_IN_SNAPSHOT) == 0
    assert len(segments(tmp_path / "s")) == 2
