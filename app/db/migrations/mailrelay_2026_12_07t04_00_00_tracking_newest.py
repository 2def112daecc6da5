"""Tracking newest: every search on one field, newest first, by one function that keeps its
plans, replacing the two lookups of 2026-12-07T02:00; the .sql file of the same name says why.
Backwards drops it and makes those two again."""

from pathlib import Path

from app.db.migrations import script_migration
from app.db.migrations.mailrelay_2026_12_07t02_00_00_tracking_lookups import SQL as LOOKUPS_SQL

ID = "2026-12-07T04:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "tracking newest: a search on one field, by one function that keeps its plans"

SQL = Path(__file__).with_suffix(".sql")


forwards = script_migration(
    ID,
    DESCRIPTION,
    SQL.read_text,
    lambda: (
        "DROP FUNCTION mail_logs_newest(text, text, bigint, bigint); " + LOOKUPS_SQL.read_text()
    ),
)
