"""The committed migrations of the `mailrelay` Piccolo app, the error one raises when it must
not change the database it found, and what the migrations written as SQL scripts share."""

from collections.abc import Awaitable, Callable

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder


class MigrationRefused(Exception):
    """A migration found the database in a state it must not change; it changed nothing, and
    the message says what to do. `mailrelay migrate` shows the message as its one-line error."""


def transaction_connection():
    """The connection of the transaction Piccolo runs a migration in: a script goes to it
    whole (several statements, dollar-quoted bodies), which Piccolo's raw() cannot send."""
    engine = engine_finder()
    transaction = engine.current_transaction.get() if engine else None
    if transaction is None:
        raise RuntimeError("a migration's script runs inside the migration's transaction only")
    return transaction.connection


def script_migration(
    migration_id: str,
    description: str,
    forwards_sql: Callable[[], str],
    backwards_sql: Callable[[], str],
) -> Callable[[], Awaitable[MigrationManager]]:
    """The `forwards` of a migration that runs one script each way (each read when it runs)."""

    async def forwards() -> MigrationManager:
        manager = MigrationManager(
            migration_id=migration_id, app_name="mailrelay", description=description
        )

        async def run() -> None:
            await transaction_connection().execute(forwards_sql())

        async def run_backwards() -> None:
            await transaction_connection().execute(backwards_sql())

        manager.add_raw(run)
        manager.add_raw_backwards(run_backwards)
        return manager

    return forwards
