"""Tracking newest: every search on one field, newest first, by one function that keeps its
plans, replacing the two lookups of 2026-12-07T02:00; the .sql file of the same name says why.
Backwards drops it and makes those two again."""

from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import _connection
from app.db.migrations.mailrelay_2026_12_07t02_00_00_tracking_lookups import SQL as LOOKUPS_SQL

ID = "2026-12-07T04:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "tracking newest: a search on one field, by one function that keeps its plans"

SQL = Path(__file__).with_suffix(".sql")


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)

    async def run():
        await _connection().execute(SQL.read_text())

    async def run_backwards():
        await _connection().execute(
            "DROP FUNCTION mail_logs_newest(text, text, bigint, bigint); " + LOOKUPS_SQL.read_text()
        )

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
