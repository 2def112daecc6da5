"""The log tables' identifiers (queue IDs, Message-IDs, addresses) compared byte by byte
(COLLATE "C"); the .sql file of the same name says why and what it costs. Backwards gives them
the database's collation again."""

import re
from pathlib import Path

from app.db.migrations import script_migration

ID = "2026-12-06T12:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "log identifiers compared byte by byte (COLLATE C)"

SQL = Path(__file__).with_suffix(".sql")


def backwards_sql() -> str:
    """The forward statements with the database's collation instead of "C"."""
    statements = re.sub(r"^--.*\n", "", SQL.read_text(), flags=re.M)
    return statements.replace('COLLATE "C"', 'COLLATE "default"')


forwards = script_migration(ID, DESCRIPTION, SQL.read_text, backwards_sql)
