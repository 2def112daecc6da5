"""Room on mail_log_latest's pages for updated rows (fillfactor 50); the .sql file of the same
name says why. Backwards gives the table PostgreSQL's default again."""

from pathlib import Path

from app.db.migrations import script_migration

ID = "2026-12-06T13:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "mail_log_latest: room on its pages for updated rows"

SQL = Path(__file__).with_suffix(".sql")


forwards = script_migration(
    ID, DESCRIPTION, SQL.read_text, lambda: "ALTER TABLE mail_log_latest RESET (fillfactor);"
)
