"""The agent's journal of one takeover (app/agent/takeover_journal.py): what earlier tries
took is read back only for the same takeover, and only from lines that reached the disk whole."""

from __future__ import annotations

import pytest

from app.agent.takeover_journal import JournalError, TakeoverJournal

KEY = "2026-12-07T18:55:19.123456Z"


def test_a_later_try_of_the_same_takeover_reads_what_the_earlier_took(tmp_path):
    path = tmp_path / "journal"
    first = TakeoverJournal(path, KEY)
    assert first.earlier() == []
    first.took("replica", ["4ZreplicaAA1", "4ZreplicaAA2"])
    first.took("shadow", ["4ZshadowAAA1"])
    first.took("shadow", ["4ZshadowAAA1"])  # written once
    again = TakeoverJournal(path, KEY)
    assert again.earlier() == ["4ZreplicaAA1", "4ZreplicaAA2", "4ZshadowAAA1"]
    assert again.before["replica"] == {"4ZreplicaAA1", "4ZreplicaAA2"}
    assert path.read_text().count("4ZshadowAAA1") == 1


def test_another_takeover_starts_the_journal_afresh(tmp_path):
    path = tmp_path / "journal"
    TakeoverJournal(path, KEY).took("replica", ["4ZreplicaAA1"])
    later = TakeoverJournal(path, "2026-12-08T01:00:00.000000Z")
    assert later.earlier() == []
    assert TakeoverJournal(path, KEY).earlier() == []


def test_a_line_cut_short_by_a_power_cut_is_not_read(tmp_path):
    path = tmp_path / "journal"
    TakeoverJournal(path, KEY).took("shadow", ["4ZshadowAAA1"])
    with path.open("a") as journal:
        journal.write("shadow 4ZshadowAAA2 4Zsha")  # no newline: never fsync'ed whole
    assert TakeoverJournal(path, KEY).earlier() == ["4ZshadowAAA1"]


def test_what_is_not_a_queue_id_is_not_read(tmp_path):
    path = tmp_path / "journal"
    path.write_text(f"takeover {KEY}\nreplica ../../etc 4ZreplicaAA1\nother 4ZotherAAAA1\n")
    assert TakeoverJournal(path, KEY).earlier() == ["4ZreplicaAA1"]


@pytest.mark.parametrize("key", ["", "two words", "a\nreplica 4ZfakeAAAAA1", "x" * 65])
def test_a_key_that_could_forge_a_line_is_refused(tmp_path, key):
    with pytest.raises(JournalError, match="a takeover's key"):
        TakeoverJournal(tmp_path / "journal", key)
