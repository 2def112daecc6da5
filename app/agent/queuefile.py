"""Read the envelope sender of a Postfix queue file the way Postfix's requeue path reads it.

A pure parser (bytes in, sender out; no I/O): the file comes from the peer and is untrusted.
A queue file is a sequence of records: one type byte, the data length in 7-bit groups (low
group first, the high bit set on all but the last), then the data (src/global/record.c,
rec_get_raw). `postsuper -r` sends a file through pickup(8), which reads the envelope segment
with rec_get(): pointer records ('p') are followed, padding ('w') skipped, and the segment ends
at the message record ('M'). Only envelope record types are allowed there, the first sender
record ('S') is the sender, and cleanup(8) rejects a second one. This parser follows the same
path and is stricter: anything pickup would reject, or that would make this parser guess, is
an error.
"""

from __future__ import annotations

REC_TYPE_FROM = ord("S")
REC_TYPE_MESG = ord("M")
REC_TYPE_PTR = ord("p")
REC_TYPE_DTXT = ord("w")
# src/global/rec_type.h: REC_TYPE_ENVELOPE (its first member 'M' ends the segment).
ENVELOPE_TYPES = frozenset(b"MCTcFILSDRO/WVA>K<ion")
# Postfix's line_length_limit guards a record's size; an envelope address is far shorter.
MAX_ENVELOPE_RECORD = 64 * 1024
MAX_LENGTH_BYTES = 4  # rec_get_raw refuses a length that does not fit an int


class QueueFileError(ValueError):
    """The bytes are not a queue file this node will take over."""


def _record(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """The record at `offset`: (type, data, offset of the next record)."""
    if offset >= len(data):
        raise QueueFileError(f"the envelope ends at byte {offset} without a message record")
    kind = data[offset]
    position, length, shift = offset + 1, 0, 0
    while True:
        if shift >= 7 * MAX_LENGTH_BYTES or position >= len(data):
            raise QueueFileError(f"record at byte {offset}: malformed length")
        byte = data[position]
        position += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if length > MAX_ENVELOPE_RECORD or position + length > len(data):
        raise QueueFileError(f"record at byte {offset}: length {length} runs past the file")
    return kind, data[position : position + length], position + length


def envelope_sender(data: bytes) -> str:
    """The envelope sender ('' for the null sender of a bounce); QueueFileError when the
    envelope is malformed, has no sender or more than one."""
    senders: list[bytes] = []
    offset, visited = 0, set()
    while True:
        if offset in visited:
            raise QueueFileError(f"pointer records loop back to byte {offset}")
        visited.add(offset)
        kind, value, offset = _record(data, offset)
        if kind == REC_TYPE_MESG:
            break
        if kind == REC_TYPE_PTR:
            target = value.strip()
            if not target.isdigit():
                raise QueueFileError(f"malformed pointer record {value[:40]!r}")
            # A zero pointer is a placeholder (rec_goto): reading goes on after it.
            if int(target):
                offset = int(target)
            continue
        if kind == REC_TYPE_DTXT:
            continue
        if kind not in ENVELOPE_TYPES:
            raise QueueFileError(f"record type {chr(kind)!r} does not belong in an envelope")
        if kind == REC_TYPE_FROM:
            senders.append(value)
    if len(senders) != 1:
        raise QueueFileError(f"{len(senders)} envelope sender records, not one")
    try:
        sender = senders[0].decode("utf-8")
    except UnicodeDecodeError:
        raise QueueFileError("the envelope sender is not UTF-8") from None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in sender):
        raise QueueFileError(f"the envelope sender {sender[:80]!r} holds spaces or controls")
    return sender


def sender_domain(sender: str) -> str | None:
    """The domain of an envelope sender as the sender_access map is keyed (lower case, no
    trailing dot); None for the null sender and an address without a domain."""
    local, at, domain = sender.rpartition("@")
    if not at or not local or not domain:
        return None
    return domain.lower().rstrip(".") or None
