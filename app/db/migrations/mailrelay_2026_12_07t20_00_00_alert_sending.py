"""alert_notices.sending_since: a notice claimed but not yet sent; the .sql file of the same
name says why. Backwards drops the column."""

from pathlib import Path

from app.db.migrations import script_migration

ID = "2026-12-07T20:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "alert_notices.sending_since: a notice whose run died before sending it is sent"

SQL = Path(__file__).with_suffix(".sql")


forwards = script_migration(
    ID, DESCRIPTION, SQL.read_text, lambda: "ALTER TABLE alert_notices DROP COLUMN sending_since;"
)
