"""The envelope sender of an untrusted queue file, read as pickup(8) reads it on a requeue."""

from __future__ import annotations

import pytest

from app.agent.queuefile import QueueFileError, envelope_sender, sender_domain


def record(kind: str, data: bytes) -> bytes:
    """One Postfix record: type, length in 7-bit groups (low first), data."""
    length, out = len(data), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return kind.encode() + bytes(out) + data


def envelope(*records: bytes) -> bytes:
    return b"".join(records) + record("M", b"") + record("N", b"Subject: x")


SIZE = record("C", b"             10             30              1              1")


def test_the_sender_record_is_the_sender():
    data = envelope(SIZE, record("T", b"1733389000 0"), record("S", b"app@Allowed.Example"))
    assert envelope_sender(data) == "app@Allowed.Example"
    assert sender_domain("app@Allowed.Example.") == "allowed.example"
    assert sender_domain("") is None and sender_domain("postmaster") is None


def test_a_pointer_is_followed_as_pickup_follows_it():
    """The sender record reached through a pointer counts; one skipped over does not."""
    head = SIZE + record("T", b"1")
    skipped = record("S", b"old@blocked.example")
    pointer_at = len(head)
    target = pointer_at + len(record("p", b"%15d" % 0)) + len(skipped)
    data = head + record("p", b"%15d" % target) + skipped + envelope(record("S", b"new@ok.example"))
    assert data.index(b"new@ok.example") - 2 == target
    assert envelope_sender(data) == "new@ok.example"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (envelope(SIZE, record("S", b"a@x.example"), record("S", b"b@y.example")), "2 envelope"),
        (envelope(SIZE), "0 envelope sender records"),
        (envelope(SIZE, record("N", b"x"), record("S", b"a@x.example")), "does not belong"),
        (SIZE + record("S", b"a@x.example"), "without a message record"),
        (SIZE + b"S\xff\xff\xff\xff\x7f", "malformed length"),
        (SIZE + b"S\x7fshort", "runs past the file"),
        (record("p", b"3") + record("p", b"3"), "loop back"),
        (envelope(record("S", b"a b@x.example")), "spaces or controls"),
        (envelope(record("S", b"\xff@x.example")), "not UTF-8"),
    ],
)
def test_a_malformed_envelope_is_refused(data, problem):
    with pytest.raises(QueueFileError, match=problem):
        envelope_sender(data)
