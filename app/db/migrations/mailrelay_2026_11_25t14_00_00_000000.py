"""Written by hand: a composite unique index Piccolo's column API cannot express."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-25T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "one log context row per node and queue id"


class _Raw(Table):
    pass


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)

    async def run():
        await _Raw.raw(
            "CREATE UNIQUE INDEX IF NOT EXISTS log_messages_node_queue_id "
            "ON log_messages (node_id, queue_id)"
        )

    async def run_backwards():
        await _Raw.raw("DROP INDEX IF EXISTS log_messages_node_queue_id")

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
