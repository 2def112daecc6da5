"""Fields in PostgreSQL's binary COPY format, made in plain Python, for COPY data that is built
away from the event loop (log ingestion encodes a batch's rows in the thread that parses it,
while the loop sends the batch before).

A binary COPY stream is HEADER, then per row its field count (`row_head`) and each field (a
length and the value in network byte order, or NULL), then TRAILER (PostgreSQL's "COPY" page,
"Binary Format"). The encoders here are those of the column types the callers use.
"""

from __future__ import annotations

import datetime as dt
import struct

# Signature, flags (no OIDs), header extension length 0.
HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"

_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # timestamptz counts microseconds from here
_EIGHT = (8).to_bytes(4, "big")
_TWO = (2).to_bytes(4, "big")
_FLOAT8 = struct.Struct(">d")


def stream(fields: list[bytes]) -> bytes:
    """A whole COPY stream of the rows whose heads and fields `fields` holds, in order."""
    return HEADER + b"".join(fields) + TRAILER


def row_head(fields: int) -> bytes:
    return fields.to_bytes(2, "big")


def text(value: str) -> bytes:
    """text and varchar (the database's encoding is UTF-8)."""
    data = value.encode()
    return len(data).to_bytes(4, "big") + data


def timestamptz(value: dt.datetime) -> bytes:
    """An aware datetime (a naive one has no place on PostgreSQL's time line)."""
    since = value - _EPOCH
    micros = (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds
    return _EIGHT + micros.to_bytes(8, "big", signed=True)


def float8(value: float | None) -> bytes:
    return NULL if value is None else _EIGHT + _FLOAT8.pack(value)


def int2(value: int) -> bytes:
    return _TWO + value.to_bytes(2, "big", signed=True)


def int8(value: int | None) -> bytes:
    return NULL if value is None else _EIGHT + value.to_bytes(8, "big", signed=True)
