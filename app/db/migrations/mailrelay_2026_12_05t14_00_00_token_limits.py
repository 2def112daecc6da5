"""Written by hand: API tokens get allowed source networks, an expiry and the last caller's
address (the `write` kind needs no column: a kind is a string)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Text, Timestamptz, Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-05T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "api token source networks, expiry and last address"


def _params(**changes):
    return {
        "default": None,
        "null": True,
        "primary_key": False,
        "unique": False,
        "index": False,
        "index_method": IndexMethod.btree,
        "choices": None,
        "db_column_name": None,
        "secret": False,
        **changes,
    }


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)
    for name, column_class, params in (
        ("allowed_networks", Text, _params(default="", null=False)),
        ("expires_at", Timestamptz, _params()),
        ("last_used_ip", Varchar, _params(length=45)),
    ):
        manager.add_column(
            table_class_name="ApiToken",
            tablename="api_tokens",
            column_name=name,
            db_column_name=name,
            column_class_name=column_class.__name__,
            column_class=column_class,
            params=params,
            schema=None,
        )
    return manager
