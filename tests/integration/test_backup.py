"""`mailrelay backup` and `mailrelay restore` as an operator runs them: real pg_dump and
pg_restore against the test cluster's databases."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from app.auth import users
from app.auth.roles import Role
from app.cluster import pull
from app.config import applied, service
from app.crypto import SecretBox, ensure_secret_key
from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import ID as BASELINE
from tests.conftest import make_user
from tests.integration.test_cli import assert_one_line_error, run
from tests.oldchain import AFTER_BASELINE, as_the_old_chain_left_it, migrated

COMPARED = ("app_users", "config_versions", "audit_log", "applied_versions", "migration")


@pytest.fixture
def scratch_databases(pg_cluster):
    """scratch("name") -> the URL of a new empty database, dropped after the test."""
    made: list[str] = []

    def scratch(name: str) -> str:
        made.append(name)
        pg_cluster.drop_database(name)
        return pg_cluster.create_database(name)

    yield scratch
    for name in made:
        pg_cluster.drop_database(name)


@pytest.fixture
def box(settings) -> SecretBox:
    ensure_secret_key(settings.secret_key_file)
    return SecretBox(settings.secret_key_file)


async def rows(url: str, table: str) -> list[dict]:
    connection = await asyncpg.connect(url)
    try:
        return [dict(row) for row in await connection.fetch(f"SELECT * FROM {table} ORDER BY 1")]  # noqa: S608
    finally:
        await connection.close()


async def a_node_with_data(box: SecretBox, settings) -> None:
    """Users, two config versions (one applied here, with a route password), their audit."""
    await make_user("olga", "operator")
    await users.create_user("rita", "rita-long-password", Role.parse("readonly"), actor="cli")
    config = {
        "sender_domains": [
            {
                "name": "example.com",
                "comment": "",
                "route": {
                    "host": "198.18.0.21",
                    "port": 587,
                    "tls_mode": "encrypt",
                    "auth_user": "u",
                    "auth_password_enc": box.encrypt("route-secret-3"),
                },
            }
        ],
        "trusted_networks": [{"cidr": "198.18.0.30/32", "comment": ""}],
    }
    await service.add_domain(service.Actor("t"), "first.example")
    number = await service.replace_all(pull.ACTOR, config, "config.import", "from a test")
    await applied.record_own(settings.node_id, number)


def our_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_a_backup_restored_into_a_fresh_database_has_the_same_users_versions_and_audit(
    tmp_path, settings, box, scratch_databases
):
    await a_node_with_data(box, settings)
    backups = tmp_path / "backups"
    result = run("backup", env={"BACKUP_DIR": str(backups)})
    assert result.returncode == 0, result.stderr
    [dump] = backups.glob(f"mailrelay-{settings.node_id}-*Z.dump")
    [export] = backups.glob(f"mailrelay-{settings.node_id}-*Z.config.json")
    assert dump.name.removesuffix(".dump") == export.name.removesuffix(".config.json")
    assert our_files(backups) == sorted([dump.name, export.name])
    for path in (dump, export):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # One line for the run: which file, how big, how long.
    [line] = [line for line in result.stderr.splitlines() if "mailrelay.backup" in line]
    assert str(dump) in line and "KiB" in line and " s;" in line, line
    document = json.loads(export.read_text())
    assert document["sender_domains"][0]["route"]["auth_password"] == "route-secret-3"
    assert document["master_version"] == (await applied.of(settings.node_id))["number"]

    fresh = scratch_databases("restored_node")
    result = run("restore", str(dump), env={"DATABASE_URL": fresh})
    assert result.returncode == 0, result.stderr
    for table in COMPARED:
        assert await rows(fresh, table) == await rows(os.environ["DATABASE_URL"], table), table
    assert "up to date" in run("migrate", env={"DATABASE_URL": fresh}).stdout
    # The sequences came along: a new account on the restored database gets a fresh id.
    result = run(
        "create-user",
        "newcomer",
        "--password-stdin",
        stdin="newcomer-password-1\n",
        env={"DATABASE_URL": fresh},
    )
    assert result.returncode == 0, result.stderr
    ids = [row["id"] for row in await rows(fresh, "app_users")]
    assert len(set(ids)) == len(ids) == 4


async def test_a_restore_into_a_database_that_is_not_empty_is_refused_and_changes_nothing(
    tmp_path, settings, box
):
    await a_node_with_data(box, settings)
    backups = tmp_path / "backups"
    assert run("backup", env={"BACKUP_DIR": str(backups)}).returncode == 0
    [dump] = backups.glob("*.dump")
    await make_user("after-the-backup", "readonly")
    url = os.environ["DATABASE_URL"]
    before = {table: await rows(url, table) for table in COMPARED}
    result = run("restore", str(dump))
    assert_one_line_error(result, "restore refused: database mailrelay_test is not empty")
    assert "migrations applied" in result.stderr and "dropdb" in result.stderr
    assert {table: await rows(url, table) for table in COMPARED} == before

    not_a_dump = tmp_path / "notes.json"
    not_a_dump.write_text("{}")
    assert_one_line_error(run("restore", str(not_a_dump)), "is not a dump of `mailrelay backup`")


async def test_a_dump_of_a_database_the_old_chain_made_restores_and_migrates_forward(
    tmp_path,
    scratch_databases,
    box,  # the node's secret key: the test passed alone only after one that made it
):
    """A dump made before the migrations were squashed, restored on a host that runs this
    release: `mailrelay migrate` records the baseline beside the old chain's IDs."""
    old = migrated(scratch_databases, "older_release")
    await as_the_old_chain_left_it(old)
    names = [row["name"] for row in await rows(old, "migration")]
    backups = tmp_path / "backups"
    # Nothing applied on that node yet: the dump alone, and the run says so.
    result = run("backup", env={"DATABASE_URL": old, "BACKUP_DIR": str(backups)})
    assert result.returncode == 0, result.stderr
    assert "runs no applied version: no export" in result.stderr
    [dump] = backups.iterdir()
    fresh = scratch_databases("restored_older")
    assert run("restore", str(dump), env={"DATABASE_URL": fresh}).returncode == 0
    result = run("migrate", env={"DATABASE_URL": fresh})
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in await rows(fresh, "migration")] == [
        *names,
        BASELINE,
        *AFTER_BASELINE,
    ]
    assert await rows(fresh, "sender_domains") == await rows(old, "sender_domains")


async def test_rotation_keeps_the_newest_backups_and_leaves_other_files_alone(
    tmp_path, settings, box
):
    backups = tmp_path / "backups"
    backups.mkdir()
    node = settings.node_id
    old_stamps = ["20261101T020000Z", "20261102T020000Z", "20261103T020000Z"]
    for stamp in old_stamps:
        (backups / f"mailrelay-{node}-{stamp}.dump").write_bytes(b"PGDMP old")
        (backups / f"mailrelay-{node}-{stamp}.config.json").write_text("{}")
    foreign = [
        "notes.txt",
        "mailrelay-other-20261101T020000Z.dump",  # the peer's, in a shared directory
        f"mailrelay-{node}-20261101T020000Z.dump.keep",
        f"mailrelay-{node}-manual.dump",
    ]
    for name in foreign:
        (backups / name).write_text("not ours to delete")
    # A run killed two days ago left its temporary file; one running now (this process) has
    # a fresh one.
    stale = backups / f".mailrelay-{node}-20261102T020000Z.dump.4242.tmp"
    running = backups / f".mailrelay-{node}-20261203T020000Z.dump.{os.getpid()}.tmp"
    for temp in (stale, running):
        temp.write_bytes(b"PGDMP partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))

    result = run("backup", env={"BACKUP_DIR": str(backups), "BACKUP_KEEP": "2"})
    assert result.returncode == 0, result.stderr
    [new_dump] = [p for p in backups.glob(f"mailrelay-{node}-*Z.dump") if "202611" not in p.name]
    new_stamp = new_dump.name.removeprefix(f"mailrelay-{node}-").removesuffix(".dump")
    # This node runs no applied version here: the new backup is a dump alone.
    kept = [
        f"mailrelay-{node}-{new_stamp}.dump",
        f"mailrelay-{node}-{old_stamps[-1]}.dump",
        f"mailrelay-{node}-{old_stamps[-1]}.config.json",
    ]
    assert our_files(backups) == sorted([*kept, *foreign, running.name])
    assert "removed 5 files" in result.stderr


async def test_a_failed_pg_dump_leaves_no_file_and_is_one_clear_line(
    tmp_path, pg_cluster, scratch_databases
):
    """pg_dump refused mid-way (a table the backup's role may not read): no partial dump."""
    denied = scratch_databases("backup_denied")
    admin = await asyncpg.connect(denied)
    try:
        await admin.execute("DROP ROLE IF EXISTS backup_reader")
        await admin.execute("CREATE ROLE backup_reader LOGIN")
        await admin.execute("CREATE TABLE readable (x int); GRANT SELECT ON readable TO PUBLIC")
        await admin.execute("CREATE TABLE secret (x int); REVOKE ALL ON secret FROM PUBLIC")
    finally:
        await admin.close()
    backups = tmp_path / "backups"
    url = denied.replace(f"{pg_cluster.user}@", "backup_reader@")
    try:
        result = run("backup", env={"DATABASE_URL": url, "BACKUP_DIR": str(backups)})
    finally:
        pg_cluster.drop_database("backup_denied")
        admin = await asyncpg.connect(pg_cluster.dsn())
        await admin.execute("DROP ROLE backup_reader")
        await admin.close()
    assert_one_line_error(result, "backup failed: pg_dump failed (exit 1)")
    assert "permission denied for table secret" in result.stderr
    assert list(backups.iterdir()) == []


def fake_pg_dump(folder: Path) -> dict[str, str]:
    """A pg_dump on PATH that writes 5 MB of its dump and then takes its time, as a dump of a
    database that outgrew the unit's time limit does."""
    folder.mkdir()
    tool = folder / "pg_dump"
    tool.write_text("#!/bin/sh\nhead -c 5000000 /dev/zero\nexec sleep 60\n")
    tool.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


async def test_a_run_stopped_by_sigterm_leaves_no_partial_dump(tmp_path, settings):
    backups = tmp_path / "backups"
    env = {
        **os.environ,
        **fake_pg_dump(tmp_path / "bin"),
        "BACKUP_DIR": str(backups),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "backup"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            partial = list(backups.glob(".*.tmp")) if backups.exists() else []
            if partial and partial[0].stat().st_size >= 5_000_000:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the dump never began")
        os.killpg(process.pid, signal.SIGTERM)  # as systemd stops the unit's control group
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 1
    assert "backup stopped (SIGTERM)" in stderr and "Traceback" not in stderr
    assert list(backups.iterdir()) == []


async def test_the_partial_dumps_of_killed_runs_go_before_the_next_dump(tmp_path, settings):
    """SIGKILL or a power cut leaves a temporary file: the next run removes it first, whether
    its dump then succeeds or not (nightly failures must not fill the disk)."""
    backups = tmp_path / "backups"
    backups.mkdir()
    gone = backups / f".mailrelay-{settings.node_id}-20261201T000000Z.dump.999999999.tmp"
    old = backups / f".mailrelay-{settings.node_id}-20261202T000000Z.dump.{os.getpid()}.tmp"
    other_node = backups / ".mailrelay-zz-20261201T000000Z.dump.999999999.tmp"
    for path in (gone, old, other_node):
        path.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    failing = tmp_path / "bin"
    failing.mkdir()
    (failing / "pg_dump").write_text("#!/bin/sh\necho 'pg_dump: error: refused' >&2\nexit 1\n")
    (failing / "pg_dump").chmod(0o755)
    result = run(
        "backup",
        env={"BACKUP_DIR": str(backups), "PATH": f"{failing}:{os.environ['PATH']}"},
    )
    assert_one_line_error(result, "backup failed: pg_dump failed (exit 1)")
    assert sorted(p.name for p in backups.iterdir()) == [other_node.name]


async def test_a_dump_of_the_other_node_is_restored_only_when_the_operator_says_so(
    tmp_path, settings, box, scratch_databases
):
    await a_node_with_data(box, settings)
    backups = tmp_path / "backups"
    assert run("backup", env={"BACKUP_DIR": str(backups)}).returncode == 0
    [dump] = backups.glob("*.dump")
    fresh = scratch_databases("restored_elsewhere")
    other = "b" if settings.node_id != "b" else "a"
    result = run("restore", str(dump), env={"DATABASE_URL": fresh, "NODE_ID": other})
    assert_one_line_error(result, f"is a backup of node {settings.node_id}, and this is node")
    assert f"--from-node={settings.node_id}" in result.stderr
    assert await rows(fresh, "pg_tables WHERE schemaname = 'public'") == []
    renamed = tmp_path / "node-a.dump"
    dump.rename(renamed)
    result = run("restore", str(renamed), env={"DATABASE_URL": fresh})
    assert_one_line_error(result, "so whose it is cannot be told: give --from-node=NODE")
    result = run(
        "restore", str(renamed), f"--from-node={settings.node_id}", env={"DATABASE_URL": fresh}
    )
    assert result.returncode == 0, result.stderr


async def test_a_database_a_newer_release_made_is_not_migrated_by_this_one(
    tmp_path, settings, scratch_databases
):
    """Restored from a newer release's dump (or made by one): this release would run on a
    schema it does not know, so `migrate` refuses and changes nothing."""
    newer = migrated(scratch_databases, "newer_release")
    connection = await asyncpg.connect(newer)
    try:
        await connection.execute(
            "INSERT INTO migration (name, app_name, ran_on) "
            "VALUES ('2099-01-01T00:00:00:000000', 'mailrelay', now())"
        )
    finally:
        await connection.close()
    before = await rows(newer, "migration")
    result = run("migrate", env={"DATABASE_URL": newer})
    assert_one_line_error(result, "migration refused: the database has 1 migrations this release")
    assert "2099-01-01T00:00:00:000000" in result.stderr
    assert await rows(newer, "migration") == before


async def test_backups_named_while_the_clock_was_ahead_do_not_push_out_new_ones(
    tmp_path, settings, box
):
    """Three backups made while the clock was a year ahead: the one made now is kept, and the
    oldest of those goes, not the new one."""
    backups = tmp_path / "backups"
    backups.mkdir()
    node = settings.node_id
    ahead = time.time() + 365 * 86400
    for day in ("01", "02", "03"):
        path = backups / f"mailrelay-{node}-202712{day}T000000Z.dump"
        path.write_bytes(b"PGDMP ahead")
        ahead += 86400
        os.utime(path, (ahead, ahead))
    result = run("backup", env={"BACKUP_DIR": str(backups), "BACKUP_KEEP": "3"})
    assert result.returncode == 0, result.stderr
    names = our_files(backups)
    assert [n for n in names if "2027" not in n and n.endswith(".dump")], names
    assert len([n for n in names if n.endswith(".dump")]) == 3
