"""The `mailrelay` command as an operator runs it: real processes, real database."""

from __future__ import annotations

import os
import subprocess
import sys

from app.db.tables import AppUser, AuditLog


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def assert_one_line_error(result, text: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("20")]
    assert lines == [lines[0]] and text in lines[0], result.stderr


async def test_it_names_the_bad_variable():
    assert_one_line_error(run("migrate", env={"RETENTION_DAYS": "soon"}), "RETENTION_DAYS")
    assert_one_line_error(run("migrate", env={"CLUSTER_MODE": "primary"}), "CLUSTER_MODE")
    assert_one_line_error(run("migrate", env={"DATABASE_URL": "mysql://x"}), "DATABASE_URL")


async def test_an_unreachable_database_is_one_clear_line():
    result = run("migrate", env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert_one_line_error(result, "cannot connect to the database")


async def test_migrate_is_idempotent():
    assert run("migrate").returncode == 0
    assert "up to date" in run("migrate").stdout


async def test_create_user_and_reset_password():
    result = run(
        "create-user",
        "carol",
        "--role",
        "operator",
        "--password-stdin",
        stdin="carol-long-password\n",
    )
    assert result.returncode == 0, result.stderr
    row = await AppUser.objects().where(AppUser.username == "carol").first()
    assert row.role == "operator"
    assert row.must_change_password is True
    result = run("reset-password", "carol", "--password-stdin", stdin="another-password-1\n")
    assert result.returncode == 0, result.stderr
    assert await AuditLog.exists().where(
        (AuditLog.action == "user.reset_password") & (AuditLog.actor == "cli")
    )


async def test_user_errors_are_one_line():
    assert_one_line_error(
        run("create-user", "dave", "--password-stdin", stdin="short\n"), "at least 12"
    )
    assert_one_line_error(
        run("create-user", "dave", "--role", "root", "--password-stdin", stdin="x" * 13),
        "unknown role",
    )
    assert_one_line_error(
        run("reset-password", "nobody", "--password-stdin", stdin="a-long-password-1\n"),
        "no user nobody",
    )
    assert_one_line_error(run("create-user", "dave"), "--password-stdin")
