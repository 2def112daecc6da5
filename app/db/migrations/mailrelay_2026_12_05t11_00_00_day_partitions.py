"""Written by hand: mail_logs and rejection_logs become partitioned by day (UTC) on `at`.

Retention then drops a whole day as one partition (its files unlinked at commit) instead of
deleting its rows one by one: no long transaction, no dead rows for vacuum. Each table is
rebuilt in this migration's one transaction, so it converts completely or not at all:

- the old table is renamed aside and a partitioned table made LIKE it (same columns in the same
  order, defaults, NOT NULLs: the row type that log_totals' functions take stays the same);
- one partition per UTC day that has rows, one per day from today to AHEAD_DAYS ahead, and a
  DEFAULT partition: a row for a day without its own partition (ingestion after the retention
  timer stopped for a week, a log line from far back) lands there and is never refused;
- every row moves with its id; the id sequence changes owner to the new table (dropping the
  old one would drop it otherwise) and so keeps counting where it was;
- the old table goes; the primary key becomes (id, at), as PostgreSQL requires the partition
  key in a partitioned table's unique indexes (nothing references these ids: no foreign key
  points at either table); the other indexes, the functions taking the row type and the
  log_totals triggers come back from the definitions the database gave before the rename.

The triggers come back after the rows moved: log_totals already counts these rows.
app/jobs/retention.py then makes the partitions ahead, moves rows a later partition is made
for out of the default one, and drops whole days. Backwards rebuilds plain tables the same way.
"""

import datetime as dt

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-12-05T11:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "mail_logs and rejection_logs partitioned by day"

TABLES = ("mail_logs", "rejection_logs")
AHEAD_DAYS = 7
DAY = dt.timedelta(days=1)


class _Raw(Table):
    pass


def _literal(sql: str) -> str:
    """Definitions read back from the database as Piccolo raw() text: braces are not
    placeholders there."""
    return sql.replace("{", "{{").replace("}", "}}")


async def _definitions(table: str) -> tuple[list[str], list[str], list[dict]]:
    indexes = await _Raw.raw(
        "SELECT pg_get_indexdef(indexrelid) AS sql FROM pg_index "
        "WHERE indrelid = {}::regclass AND NOT indisprimary ORDER BY indexrelid",
        table,
    )
    triggers = await _Raw.raw(
        "SELECT pg_get_triggerdef(oid) AS sql FROM pg_trigger "
        "WHERE tgrelid = {}::regclass AND NOT tgisinternal ORDER BY oid",
        table,
    )
    # Functions whose arguments are the table's row type or an array of it (log_totals'
    # mail_log_totals_apply): they depend on the old table and must go before it.
    functions = await _Raw.raw(
        "SELECT p.oid, pg_get_functiondef(p.oid) AS sql FROM pg_proc AS p "
        "JOIN pg_type AS t ON t.typrelid = {}::regclass "
        "WHERE t.oid = ANY(p.proargtypes::oid[]) OR t.typarray = ANY(p.proargtypes::oid[]) "
        "ORDER BY p.oid",
        table,
    )
    # A partitioned table's indexes read "ON ONLY table": made again on the plain table (or on
    # a partitioned one, where they then cover every partition), without ONLY.
    return (
        [row["sql"].replace(" ON ONLY ", " ON ") for row in indexes],
        [row["sql"] for row in triggers],
        functions,
    )


async def _days(table: str) -> list[dt.datetime]:
    """The UTC days that have rows, found along the index on `at` (one lookup per day)."""
    rows = await _Raw.raw(
        "WITH RECURSIVE days AS ("
        f" SELECT date_trunc('day', min(at), 'UTC') AS day FROM {table}"
        " UNION ALL"
        f" SELECT (SELECT date_trunc('day', min(at), 'UTC') FROM {table}"
        "  WHERE at >= days.day + interval '24 hours')"
        " FROM days WHERE days.day IS NOT NULL"
        ") SELECT day FROM days WHERE day IS NOT NULL"
    )
    return [row["day"] for row in rows]


async def _partitions(table: str, old: str) -> None:
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = set(await _days(old)) | {today + i * DAY for i in range(AHEAD_DAYS + 1)}
    for day in sorted(days):
        await _Raw.raw(
            f"CREATE TABLE {table}_p{day:%Y%m%d} PARTITION OF {table} "
            f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + DAY).isoformat()}')"
        )
    await _Raw.raw(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")


async def _rebuild(table: str, partitioned: bool) -> None:
    indexes, triggers, functions = await _definitions(table)
    sequence = (await _Raw.raw("SELECT pg_get_serial_sequence({}, 'id') AS name", table))[0][
        "name"
    ]
    old = f"{table}_before_{'partitions' if partitioned else 'unpartitioning'}"
    await _Raw.raw(f"ALTER TABLE {table} RENAME TO {old}")
    await _Raw.raw(
        f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING STORAGE INCLUDING COMMENTS)" + (" PARTITION BY RANGE (at)" if partitioned else "")
    )
    if partitioned:
        await _partitions(table, old)
    await _Raw.raw(f"INSERT INTO {table} SELECT * FROM {old}")
    await _Raw.raw(f"ALTER SEQUENCE {sequence} OWNED BY {table}.id")
    for function in functions:
        signature = (await _Raw.raw("SELECT {}::oid::regprocedure::text AS s", function["oid"]))[
            0
        ]["s"]
        await _Raw.raw(f"DROP FUNCTION {signature}")
    await _Raw.raw(f"DROP TABLE {old}")
    await _Raw.raw(
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY "
        + ("(id, at)" if partitioned else "(id)")
    )
    for statement in [
        *(_literal(index) for index in indexes),
        *(_literal(function["sql"]) for function in functions),
        *(_literal(trigger) for trigger in triggers),
    ]:
        await _Raw.raw(statement)


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)

    async def run():
        for table in TABLES:
            await _rebuild(table, partitioned=True)

    async def run_backwards():
        for table in TABLES:
            await _rebuild(table, partitioned=False)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
