"""Written by hand: mail_logs loses its three indexes that no reader uses.

Every row ingested updates every index of mail_logs, and indexes were most of what an insert
into it costs. (sender) and (recipient) only repeat the first column of (sender, at) and
(recipient, at) from the tracking indexes' migration, which serve every equality search on an
address as well; nothing searches mail_logs by status alone (the dashboard's tiles filter by
status after the `at` range, or read log_totals). EXPLAIN ANALYZE of every mail_logs read of
app/reports.py, the retention job and the ingestion, at 1,000,000 rows over 14 day partitions,
gave the same plans and the same buffers without them, but for one partition where the
recipient search took (recipient, at) instead of (recipient): one buffer more.

As the auto migrations write it (alter_column index True -> False), so that Piccolo's record
of the table agrees with app/db/tables.py; dropping an index of the partitioned table drops it
on every partition.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Text, Varchar

ID = "2026-12-05T14:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "mail_logs without its (sender), (recipient) and (status) indexes"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)
    for column, column_class in (("sender", Text), ("recipient", Text), ("status", Varchar)):
        manager.alter_column(
            table_class_name="MailLog",
            tablename="mail_logs",
            column_name=column,
            db_column_name=column,
            params={"index": False},
            old_params={"index": True},
            column_class=column_class,
            old_column_class=column_class,
            schema=None,
        )
    return manager
