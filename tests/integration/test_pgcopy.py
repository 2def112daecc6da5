"""app/db/pgcopy's fields as PostgreSQL reads them: a binary COPY of edge values into a real
table gives back the same values."""

from __future__ import annotations

import datetime as dt

from app.db import pgcopy
from app.db.tables import LogCursor

ROWS = [
    (dt.datetime(2026, 12, 6, 5, 0, 1, 123456, tzinfo=dt.UTC), "plain", 1.5, 2**40, 554),
    # Before PostgreSQL's epoch (negative microseconds), another zone, not ASCII, NULLs.
    (
        dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        "jörg@exämple.org 📨",
        None,
        None,
        -(2**15),
    ),
    (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), "", -0.25, -1, 2**15 - 1),
]


async def test_rows_come_back_as_they_were_encoded():
    data: list[bytes] = []
    for at, words, number, count, code in ROWS:
        fields = (pgcopy.timestamptz(at), pgcopy.text(words), pgcopy.float8(number))
        data += [pgcopy.row_head(5), *fields, pgcopy.int8(count), pgcopy.int2(code)]

    async with LogCursor._meta.db.transaction():
        connection = LogCursor._meta.db.current_transaction.get().connection
        await connection.execute(
            "CREATE TEMP TABLE copied (n serial, at timestamptz, words text, number float8, "
            "count bigint, code smallint) ON COMMIT DROP"
        )

        async def source():
            yield pgcopy.stream(data)

        await connection.copy_to_table(
            "copied",
            source=source(),
            columns=("at", "words", "number", "count", "code"),
            format="binary",
        )
        back = await connection.fetch(
            "SELECT at, words, number, count, code FROM copied ORDER BY n"
        )

    assert [tuple(row) for row in back] == ROWS
