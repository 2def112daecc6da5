from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-02T10:12:30:729583"
VERSION = "1.38.0"
DESCRIPTION = "applied versions: when a slave last reported"


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="mailrelay", description=DESCRIPTION
    )

    manager.add_column(
        table_class_name="AppliedVersion",
        tablename="applied_versions",
        column_name="reported_at",
        db_column_name="reported_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
