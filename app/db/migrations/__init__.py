"""The committed migrations of the `mailrelay` Piccolo app, the error one raises when it must
not change the database it found, and what the migrations written as SQL scripts share."""

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from typing import Any

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


def shipped_ids() -> frozenset[str]:
    """The migration IDs this build knows: its own, and the old chain's that its baseline
    stands for."""
    from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import LEGACY_IDS

    ids = set(LEGACY_IDS)
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("mailrelay_"):
            ids.add(importlib.import_module(f"{__name__}.{module.name}").ID)
    return frozenset(ids)


async def refuse_newer_schema(connection: Any) -> None:
    """MigrationRefused when the database records a migration this build does not ship: a
    newer release made it (or it was restored from a newer release's dump), and this build
    would run on a schema it does not know. `connection`: an asyncpg connection."""
    if await connection.fetchval("SELECT to_regclass('public.migration')") is None:
        return
    recorded = await connection.fetch(
        "SELECT name FROM migration WHERE app_name = 'mailrelay' ORDER BY name"
    )
    unknown = [row["name"] for row in recorded if row["name"] not in shipped_ids()]
    if unknown:
        raise MigrationRefused(
            f"the database has {len(unknown)} migrations this release does not know "
            f"({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}): a newer release "
            "made it or its backup; run that release, or restore a backup this release made"
        )
