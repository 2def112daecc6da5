"""Tracking lookups: the search for one queue ID or one Message-ID as functions that keep their
plan; the .sql file of the same name says why. Backwards drops them."""

from pathlib import Path

from app.db.migrations import script_migration

ID = "2026-12-07T02:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "tracking lookups: one queue ID or Message-ID, by functions that keep their plan"

SQL = Path(__file__).with_suffix(".sql")


forwards = script_migration(
    ID,
    DESCRIPTION,
    SQL.read_text,
    lambda: (
        "DROP FUNCTION mail_logs_of_queue_id(text, bigint, bigint);"
        " DROP FUNCTION mail_logs_of_message_id(text, bigint, bigint);"
    ),
)
