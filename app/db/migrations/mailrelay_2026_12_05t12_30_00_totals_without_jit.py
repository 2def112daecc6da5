"""Written by hand: the mail log totals' trigger function runs without PostgreSQL's JIT.

mail_log_totals_apply runs with enable_seqscan = off (always by queue_id through its index),
which prices the statements inside it at about 1e10, and PostgreSQL then JIT-compiles them: 40
to 65 ms per mail_logs statement for every writer (ingestion, retention), against 1 to 8 ms
without. Ingestion had worked round it with SET LOCAL jit = off per batch; this fixes it where
it arises.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-12-05T12:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "mail log totals without JIT"

SIGNATURE = "mail_log_totals_apply(mail_logs[], mail_logs[])"


class _Raw(Table):
    pass


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)

    async def run():
        await _Raw.raw(f"ALTER FUNCTION {SIGNATURE} SET jit = off")

    async def run_backwards():
        await _Raw.raw(f"ALTER FUNCTION {SIGNATURE} RESET jit")

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
