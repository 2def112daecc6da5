"""The `mailrelay` command as an operator runs it: real processes, real database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from app.crypto import SecretBox, ensure_secret_key
from app.db.tables import AppUser, AuditLog
from tests.clusterpeer import fake_agent


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


async def test_config_import_checks_encrypts_and_versions(tmp_path, settings):
    import json

    from app.config import service
    from app.crypto import SecretBox

    good = tmp_path / "lab.json"
    good.write_text(
        json.dumps(
            {
                "sender_domains": [
                    {
                        "name": "example.com",
                        "route": {
                            "host": "198.18.0.21",
                            "port": 25,
                            "tls_mode": "none",
                            "auth_user": "u",
                            "auth_password": "clear-secret-1",
                        },
                    }
                ],
                "trusted_networks": [{"cidr": "198.18.0.30/32"}],
            }
        )
    )
    result = run("config-import", str(good))
    assert result.returncode == 0, result.stderr
    latest = await service.latest_version()
    route = latest["snapshot"]["sender_domains"][0]["route"]
    assert "clear-secret-1" not in json.dumps(latest["snapshot"])
    assert SecretBox(settings.secret_key_file).decrypt(route["auth_password_enc"]) == (
        "clear-secret-1"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sender_domains": [{"name": "bad domain"}], "trusted_networks": []}))
    assert_one_line_error(run("config-import", str(bad)), "refused")
    assert (await service.latest_version())["number"] == latest["number"]


async def test_a_slaves_export_imported_on_a_replacement_master_is_numbered_past_it(
    tmp_path, settings
):
    """A wiped master comes back empty: the surviving slave's config-export, imported there,
    must make a version the slave takes (a slave applies only newer master versions)."""
    import json
    import stat

    from app.cluster import pull
    from app.config import applied, service
    from app.config.snapshot import Snapshot

    ensure_secret_key(settings.secret_key_file)  # as `serve` or any command makes it first
    box = SecretBox(settings.secret_key_file)
    config: Snapshot = {
        "sender_domains": [
            {
                "name": "example.com",
                "comment": "",
                "route": {
                    "host": "198.18.0.21",
                    "port": 587,
                    "tls_mode": "encrypt",
                    "auth_user": "u",
                    "auth_password_enc": box.encrypt("clear-secret-2"),
                },
            }
        ],
        "trusted_networks": [{"cidr": "198.18.0.30/32", "comment": ""}],
    }
    local = await service.replace_all(pull.ACTOR, config, "config.pull", "pulled master version 7")
    await applied.record_own(settings.node_id, local)
    slave = {
        "CLUSTER_MODE": "slave",
        "MASTER_API_URL": "https://198.18.0.11:8443",
        "MASTER_API_TOKEN": "not-used-by-an-export",
    }
    exported = tmp_path / "from-slave.json"
    result = run("config-export", str(exported), env=slave)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    document = json.loads(exported.read_text())
    assert document["master_version"] == 7
    assert document["sender_domains"][0]["route"]["auth_password"] == "clear-secret-2"
    assert_one_line_error(run("config-export", str(exported), env=slave), "File exists")

    document["master_version"] = 40  # what the slave runs, past this database's own numbers
    exported.write_text(json.dumps(document))
    assert run("config-import", str(exported)).returncode == 0
    latest = await service.latest_version()
    assert latest["number"] == 41
    route = latest["snapshot"]["sender_domains"][0]["route"]
    assert box.decrypt(route["auth_password_enc"]) == "clear-secret-2"
    document["master_version"] = "40"
    exported.write_text(json.dumps(document))
    assert_one_line_error(run("config-import", str(exported)), "master_version")


async def test_config_apply_without_an_agent_is_one_clear_line():
    from app.config import service

    await service.add_domain(service.Actor("t"), "example.com")
    assert_one_line_error(
        run("config-apply", env={"AGENT_SOCKET": "/nonexistent/agent.sock"}),
        "agent is not reachable",
    )


async def test_create_token_prints_it_once():
    from app.db.tables import ApiToken

    result = run("create-token", "peer-b", "--kind", "cluster")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("mrt_")
    row = await ApiToken.select().where(ApiToken.name == "peer-b").first()
    assert row["kind"] == "cluster"


async def test_the_first_admin_gets_a_random_one_time_password_printed_once(settings):
    from app.auth.passwords import verify_password
    from app.web.app import create_app
    from tests.conftest import http_client, login

    await AppUser.raw("TRUNCATE app_users CASCADE")
    # A fresh install: the web app's start creates no account, so nothing has a known password.
    async with http_client(create_app(settings)):
        assert await AppUser.count() == 0

    first = run("create-first-admin")
    assert first.returncode == 0, first.stderr
    password = first.stdout.strip()
    assert len(password) >= 20 and "\n" not in password
    admin = await AppUser.objects().where(AppUser.username == "admin").first()
    assert admin.role == "admin" and admin.must_change_password
    assert verify_password(admin.password_hash, password)
    for known in ("Admin123", "admin", "password", "changeme"):
        assert not verify_password(admin.password_hash, known)

    again = run("create-first-admin")
    assert again.returncode == 0 and again.stdout == ""
    assert "accounts exist already" in again.stderr
    assert await AppUser.count() == 1
    # Each install draws its own.
    await AppUser.raw("TRUNCATE app_users CASCADE")
    assert run("create-first-admin").stdout.strip() != password

    async with http_client(create_app(settings)) as client:
        response = await login(client, "admin", "Admin123")
        assert response.status_code != 303


async def test_reset_second_factor_is_the_way_back_for_an_admin_without_factors():
    import datetime as dt

    from app.db.tables import SecondFactor

    admin = await AppUser.objects().where(AppUser.username == "admin").first()
    await SecondFactor.insert(
        SecondFactor(
            user=admin.id,
            kind="totp",
            name="phone",
            totp_secret_enc="x",
            created_at=dt.datetime.now(dt.UTC),
        )
    )
    result = run("reset-second-factor", "admin")
    assert result.returncode == 0, result.stderr
    assert not await SecondFactor.exists().where(SecondFactor.user == admin.id)
    assert await AuditLog.exists().where(
        (AuditLog.action == "mfa.reset") & (AuditLog.actor == "cli") & (AuditLog.target == "admin")
    )
    assert_one_line_error(run("reset-second-factor", "nobody"), "There is no user nobody.")


async def test_a_node_booting_without_its_database_holds_its_queue_first(tmp_path):
    """The boot reconcile holds the stale queue and writes down what it held before it needs
    PostgreSQL: without the database it cannot ask the peer, and the mail stays on hold (the
    alert counts it) instead of going out a second time."""
    held = ["4dLq2G1xZ9z9vxA", "4dLq2G1xZ9z9vxB"]
    async with fake_agent({"hold_all": held}) as agent:
        env = {
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "AGENT_SOCKET": str(agent.path),
            "STATE_DIR": str(tmp_path),
        }
        result = await asyncio.to_thread(run, "reconcile", env=env)
    assert_one_line_error(result, "cannot connect to the database")
    assert agent.verbs == ["hold_all"]
    assert json.loads((tmp_path / "held-for-reconcile.json").read_text()) == held
