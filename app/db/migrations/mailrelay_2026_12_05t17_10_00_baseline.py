"""The baseline: the whole schema in one migration, written as plain SQL in the .sql file of
the same name (read that file to learn the schema).

It replaces the sixteen migrations of the first development months (the product had no release
yet). What it does depends on the database it finds:

- a fresh database (none of the old migrations recorded): the whole schema, in one transaction;
- a database the old chain brought up to date (every old ID recorded in Piccolo's `migration`
  table, as on dev and lab installs): its schema is already this one, so nothing runs and Piccolo
  records the baseline beside the old IDs, which stay as the history of that database;
- a database that ran only part of the old chain: refused, nothing changed. The conversions
  between those migrations (plain log tables into day partitions, for one) exist no more; the
  last build that has them brings it up to date first.

Piccolo's `migrations new --auto` diffs app/db/tables.py against the add_table/add_column calls
of the migrations; this one makes none, so a later migration is written by hand (as the log
totals, partitions and counters were), with `add_column` and friends where Piccolo can say it.
"""

from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from app.db.migrations import MigrationRefused, transaction_connection

ID = "2026-12-05T17:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "baseline: the whole schema"

SQL = Path(__file__).with_suffix(".sql")

# The chain this baseline replaces, as Piccolo recorded it, and the last commit of main that
# has it.
LEGACY_IDS = (
    "2026-11-25T13:34:48:497678",
    "2026-11-25T13:58:53:735602",
    "2026-11-25T14:00:00:000000",
    "2026-11-25T14:36:06:446968",
    "2026-11-25T14:51:13:848814",
    "2026-11-25T14:55:52:043014",
    "2026-11-25T17:00:00:000000",
    "2026-11-25T17:30:00:000000",
    "2026-12-02T10:12:30:729583",
    "2026-12-05T07:15:26:097894",
    "2026-12-05T07:15:33:580940",
    "2026-12-05T11:00:00:000000",
    "2026-12-05T11:30:00:000000",
    "2026-12-05T12:30:00:000000",
    "2026-12-05T14:00:00:000000",
    "2026-12-05T14:30:00:000000",
)
LAST_BUILD_WITH_THE_CHAIN = "f10e9f9"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)

    async def run():
        connection = transaction_connection()
        recorded = await connection.fetchval(
            "SELECT count(DISTINCT name) FROM migration "
            "WHERE app_name = 'mailrelay' AND name = ANY($1::text[])",
            list(LEGACY_IDS),
        )
        if recorded == len(LEGACY_IDS):
            return
        if recorded:
            raise MigrationRefused(
                f"this database ran {recorded} of the {len(LEGACY_IDS)} migrations that the "
                "baseline replaces, and the steps between them exist no more; nothing was "
                "changed. Bring it up to date with the last build that has them first "
                f"(commit {LAST_BUILD_WITH_THE_CHAIN} on main: `mailrelay migrate`), then run "
                "this build's `mailrelay migrate` again"
            )
        await connection.execute(SQL.read_text())

    async def run_backwards():
        # Undoing the baseline would drop every table: the configuration, the accounts, the
        # audit log and the mail logs, with no way back. No operator means that by "roll back
        # the last migration"; one who wants an empty database drops and creates it (dropdb,
        # createdb) and runs `mailrelay migrate`, which says what it does.
        raise MigrationRefused(
            "the baseline is the first migration: rolling it back would drop every table and "
            "all their data, so it is refused and nothing was changed. To start from an empty "
            "database, drop and create it (dropdb, createdb) and run `mailrelay migrate`"
        )

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
