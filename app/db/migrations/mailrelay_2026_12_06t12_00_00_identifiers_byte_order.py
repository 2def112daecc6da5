"""The log tables' identifiers (queue IDs, Message-IDs, addresses) compared byte by byte
(COLLATE "C"); the .sql file of the same name says why and what it costs. Backwards gives them
the database's collation again."""

import re
from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import _connection

ID = "2026-12-06T12:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "log identifiers compared byte by byte (COLLATE C)"

SQL = Path(__file__).with_suffix(".sql")


def backwards_sql() -> str:
    """The forward statements with the database's collation instead of "C"."""
    statements = re.sub(r"^--.*\n", "", SQL.read_text(), flags=re.M)
    return statements.replace('COLLATE "C"', 'COLLATE "default"')


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)

    async def run():
        await _connection().execute(SQL.read_text())

    async def run_backwards():
        await _connection().execute(backwards_sql())

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
