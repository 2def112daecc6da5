"""The baseline migration against a real PostgreSQL: a database the old migration chain
completed is recognised and left as it is, one that ran part of the chain is refused and left
as it is, the baseline is not rolled back, and the Piccolo table classes describe the tables it
makes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.db import piccolo_app
from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import ID, LEGACY_IDS
from tests.integration.test_backup import rows, scratch_databases  # noqa: F401 (fixture)
from tests.integration.test_cli import assert_one_line_error, run
from tests.oldchain import AFTER_BASELINE, as_the_old_chain_left_it, migrated


def schema(pg_cluster, url: str) -> list[str]:
    """pg_dump --schema-only of the database, without its random \\restrict key."""
    dump = subprocess.run(
        [
            os.path.join(pg_cluster.pg_bin, "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--dbname",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in dump.splitlines() if "restrict " not in line]


async def state(pg_cluster, url: str) -> dict:
    return {
        "schema": schema(pg_cluster, url),
        "migration": [(row["name"], row["ran_on"]) for row in await rows(url, "migration")],
        "sender_domains": await rows(url, "sender_domains"),
    }


async def test_a_fresh_database_gets_the_baseline_and_only_it(scratch_databases):  # noqa: F811
    url = migrated(scratch_databases, "baseline_fresh")
    assert [row["name"] for row in await rows(url, "migration")] == [ID, *AFTER_BASELINE]
    assert "up to date" in run("migrate", env={"DATABASE_URL": url}).stdout


async def test_a_database_the_old_chain_completed_gets_the_baseline_recorded_and_nothing_else(
    pg_cluster,
    scratch_databases,  # noqa: F811
):
    url = migrated(scratch_databases, "baseline_old_chain")
    await as_the_old_chain_left_it(url)
    before = await state(pg_cluster, url)

    result = run("migrate", env={"DATABASE_URL": url})

    assert result.returncode == 0, result.stderr
    after = await state(pg_cluster, url)
    assert after["schema"] == before["schema"]
    assert after["sender_domains"] == before["sender_domains"]
    # The old IDs stay as that database's history; the baseline (and what came after it, run
    # again without changing anything) comes after them.
    assert after["migration"][: -1 - len(AFTER_BASELINE)] == before["migration"]
    assert [name for name, _ in after["migration"]] == [*LEGACY_IDS, ID, *AFTER_BASELINE]
    assert "up to date" in run("migrate", env={"DATABASE_URL": url}).stdout


async def test_a_database_that_ran_part_of_the_old_chain_is_refused_and_left_as_it_was(
    pg_cluster,
    scratch_databases,  # noqa: F811
):
    url = migrated(scratch_databases, "baseline_part_chain")
    # As far as a lab node got before the day partitions and the counters came.
    await as_the_old_chain_left_it(url, LEGACY_IDS[:11])
    before = await state(pg_cluster, url)

    result = run("migrate", env={"DATABASE_URL": url})

    assert_one_line_error(result, "migration refused: this database ran 11 of the 16 migrations")
    assert "commit f10e9f9 on main" in result.stderr and "nothing was changed" in result.stderr
    assert await state(pg_cluster, url) == before


def backwards(url: str) -> subprocess.CompletedProcess[str]:
    """Piccolo's command line rolling back the most recent migration of `url`."""
    return piccolo(url, "backwards", "mailrelay")


def piccolo(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`piccolo migrations ARGS` against `url`, answering yes."""
    return subprocess.run(
        [sys.executable, "-m", "piccolo.main", "migrations", *args],
        input="y\n",
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": url},
        timeout=60,
        check=False,
    )


async def test_rolling_the_baseline_back_is_refused_and_drops_nothing(
    pg_cluster,
    scratch_databases,  # noqa: F811
):
    url = migrated(scratch_databases, "baseline_backwards")
    # The migrations after the baseline roll back; then it is the most recent one.
    for _ in AFTER_BASELINE:
        assert backwards(url).returncode == 0
    assert [row["name"] for row in await rows(url, "migration")] == [ID]
    before = await state(pg_cluster, url)

    # The most recent migration, as an operator undoes "the last change".
    result = backwards(url)

    # Piccolo's command line prints the refusal on stdout.
    assert result.returncode != 0
    assert "rolling it back would drop every table" in result.stdout, result.stdout
    assert await state(pg_cluster, url) == before


@pytest.mark.parametrize("position", range(len(AFTER_BASELINE)))
async def test_rolling_a_later_migration_back_leaves_the_schema_before_it(
    pg_cluster,
    scratch_databases,  # noqa: F811
    position: int,
):
    """Each migration after the baseline, rolled back as the most recent one, leaves the schema
    of a database migrated up to the one before it: mail_log_latest puts back the baseline's
    three functions and drops its table, the byte order gives the identifiers the database's
    collation again, the room takes mail_log_latest's fillfactor back, promotions drops its
    table, the tracking lookups drop their two functions, the newest-first search drops its
    function and makes those two again, and nothing else changes."""
    before_it = scratch_databases(f"later_{position}_before")
    previous = ID if position == 0 else AFTER_BASELINE[position - 1]
    assert piccolo(before_it, "forwards", "mailrelay", f"--migration_id={previous}").returncode == 0
    url = scratch_databases(f"later_{position}_backwards")
    up_to = AFTER_BASELINE[position]
    assert piccolo(url, "forwards", "mailrelay", f"--migration_id={up_to}").returncode == 0
    assert schema(pg_cluster, url) != schema(pg_cluster, before_it)

    assert backwards(url).returncode == 0

    assert schema(pg_cluster, url) == schema(pg_cluster, before_it)


# pg_catalog's names of the types Piccolo calls otherwise.
PG_TYPES = {"SERIAL": "integer", "BIGSERIAL": "bigint", "TIMESTAMPTZ": "timestamp with time zone"}

CATALOG = {
    "kind": "SELECT relkind::text AS v FROM pg_class WHERE oid = {}::regclass",
    "columns": (
        "SELECT attname AS name, format_type(atttypid, atttypmod) AS type, "
        "NOT attnotnull AS null FROM pg_attribute "
        "WHERE attrelid = {}::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    ),
    "primary key": (
        "SELECT a.attname AS v FROM pg_constraint AS c "
        "CROSS JOIN unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
        "WHERE c.conrelid = {}::regclass AND c.contype = 'p' ORDER BY k.n"
    ),
    "unique": (
        "SELECT a.attname AS v FROM pg_constraint AS c "
        "JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "WHERE c.conrelid = {}::regclass AND c.contype = 'u' AND cardinality(c.conkey) = 1"
    ),
    # Plain one-column indexes: those `index=True` makes.
    "indexed": (
        "SELECT a.attname || ' ' || i.indexrelid::regclass::text AS v FROM pg_index AS i "
        "JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = {}::regclass AND i.indnatts = 1 AND NOT i.indisunique "
        "AND i.indexprs IS NULL"
    ),
    "foreign keys": (
        "SELECT a.attname || ' ' || c.confrelid::regclass::text || ' ' || c.confupdtype::text "
        "|| c.confdeltype::text AS v FROM pg_constraint AS c "
        "JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "WHERE c.conrelid = {}::regclass AND c.contype = 'f'"
    ),
}


async def test_the_table_classes_describe_the_tables_the_baseline_makes():
    """Column names in order, types, NULL or not, primary key, unique columns, indexed columns
    and foreign keys of every table class, against the catalog of the tests' database (made by
    the baseline)."""
    for table in piccolo_app.APP_CONFIG.table_classes:
        name = table._meta.tablename
        found = {}
        for what, sql in CATALOG.items():
            result = await table.raw(sql, name)
            # Columns and the primary key in their order, the rest as sets.
            found[what] = (
                result
                if what == "columns"
                else [row["v"] for row in result]
                if what == "primary key"
                else sorted(row["v"] for row in result)
            )
        kind = found.pop("kind")
        columns = table._meta.columns
        pkey = [c._meta.db_column_name for c in columns if c._meta.primary_key]
        described = {
            "columns": [
                {
                    "name": c._meta.db_column_name,
                    "type": PG_TYPES.get(c.column_type, c.column_type.lower()).replace(
                        "varchar(", "character varying("
                    ),
                    "null": c._meta.null,
                }
                for c in columns
            ],
            # Partitioned by day on `at`: PostgreSQL wants `at` in the primary key too.
            "primary key": [*pkey, "at"] if kind == ["p"] else pkey,
            "unique": sorted(c._meta.db_column_name for c in columns if c._meta.unique),
            "indexed": sorted(
                f"{c._meta.db_column_name} {name}_{c._meta.db_column_name}"
                for c in columns
                if c._meta.index
            ),
            "foreign keys": sorted(
                f"{c._meta.db_column_name} "
                f"{c._foreign_key_meta.resolved_references._meta.tablename} "
                # pg_constraint's letters: c cascade, a no action, r restrict, n set null
                f"{'c' if c._foreign_key_meta.on_update.value == 'CASCADE' else '?'}"
                f"{'c' if c._foreign_key_meta.on_delete.value == 'CASCADE' else '?'}"
                for c in table._meta.foreign_key_columns
            ),
        }
        assert described == found, name
