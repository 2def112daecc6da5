"""promotions: each takeover of the peer's queue, written when it has finished; the .sql file of
the same name says why. Backwards drops the table."""

from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import _connection

ID = "2026-12-06T15:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "promotions: a returning peer asks for queue_imports once the takeover finished"

SQL = Path(__file__).with_suffix(".sql")


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)

    async def run():
        await _connection().execute(SQL.read_text())

    async def run_backwards():
        await _connection().execute("DROP TABLE promotions;")

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
