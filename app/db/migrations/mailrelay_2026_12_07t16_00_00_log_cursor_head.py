"""log_cursors.head: which copy of the log the cursor is in; the .sql file of the same name
says why. Backwards drops the column."""

from pathlib import Path

from app.db.migrations import script_migration

ID = "2026-12-07T16:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "log_cursors.head: a log that lost its end is not read again from its start"

SQL = Path(__file__).with_suffix(".sql")


forwards = script_migration(
    ID, DESCRIPTION, SQL.read_text, lambda: "ALTER TABLE log_cursors DROP COLUMN head;"
)
