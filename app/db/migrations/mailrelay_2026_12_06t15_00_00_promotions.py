"""promotions: each takeover of the peer's queue, written when it has finished; the .sql file of
the same name says why. Backwards drops the table."""

from pathlib import Path

from app.db.migrations import script_migration

ID = "2026-12-06T15:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "promotions: a returning peer asks for queue_imports once the takeover finished"

SQL = Path(__file__).with_suffix(".sql")


forwards = script_migration(ID, DESCRIPTION, SQL.read_text, lambda: "DROP TABLE promotions;")
