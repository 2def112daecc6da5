"""Tracking lookups: the search for one queue ID or one Message-ID as functions that keep their
plan; the .sql file of the same name says why. Backwards drops them."""

from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import _connection

ID = "2026-12-07T02:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "tracking lookups: one queue ID or Message-ID, by functions that keep their plan"

SQL = Path(__file__).with_suffix(".sql")


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)

    async def run():
        await _connection().execute(SQL.read_text())

    async def run_backwards():
        await _connection().execute(
            "DROP FUNCTION mail_logs_of_queue_id(text, bigint, bigint);"
            " DROP FUNCTION mail_logs_of_message_id(text, bigint, bigint);"
        )

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
