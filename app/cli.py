"""The `mailrelay` command. A user error is one clear line on stderr and exit status 1/2."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from app import logsetup
from app.agent.postfix import AgentError
from app.crypto import SecretKeyError
from app.settings import Settings, SettingsError, load_settings

log = logging.getLogger("mailrelay")


class UserFacingError(Exception):
    pass


def _settings() -> Settings:
    settings = load_settings()
    # Piccolo reads these when it first builds its engine.
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ.setdefault("PICCOLO_CONF", "app.piccolo_conf")
    return settings


async def check_database(dsn: str) -> None:
    """Connect once ourselves, so that an unreachable database is one clear line."""
    import asyncpg

    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise UserFacingError(f"cannot connect to the database: {exc}") from None
    await connection.close()


def _run_db(work: Callable[[], Awaitable[Any]]) -> Any:
    async def wrapped() -> Any:
        await check_database(os.environ["DATABASE_URL"])
        from app.db import pool
        from app.piccolo_conf import DB

        await pool.start(min_size=1, max_size=2)
        try:
            return await work()
        finally:
            await DB.close_connection_pool()

    return asyncio.run(wrapped())


async def migrate() -> None:
    import asyncpg
    from piccolo.apps.migrations.commands.forwards import run_forwards

    from app.db.migrations import MigrationRefused, refuse_newer_schema

    try:
        connection = await asyncpg.connect(os.environ["DATABASE_URL"], timeout=10)
        try:
            await refuse_newer_schema(connection)
        finally:
            await connection.close()
        result = await run_forwards(app_name="mailrelay")
    except MigrationRefused as exc:
        raise UserFacingError(f"migration refused: {exc}") from None
    if not result.success:
        raise UserFacingError(f"migration failed: {result.message}")


def _print_pins(cert: Path) -> None:
    from app.tls import fingerprint, key_fingerprint

    print(f"HTTPS certificate SHA-256 fingerprint: {fingerprint(cert)}")
    print(
        f"its public key's SHA-256 (a pin that survives a renewal): {key_fingerprint(cert)}",
        flush=True,
    )


def cmd_renew_cert(args: argparse.Namespace) -> None:
    """A new certificate for the node's generated key (`mailrelay serve` made both); restart
    mailrelay-web and mailrelay-shadow-receiver to serve it."""
    from app.tls import LIFETIME, renew_generated

    settings = _settings()
    if settings.tls_cert_file:
        raise UserFacingError(
            f"TLS_CERT_FILE is set ({settings.tls_cert_file}): renew that certificate where it "
            "comes from"
        )
    try:
        cert = renew_generated(settings)
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"cannot renew {settings.generated_cert_file}: {exc}") from None
    print(f"renewed {cert} for {LIFETIME.days} days with the same key")
    _print_pins(cert)
    print(
        "the peer's PEER_CERT_FINGERPRINT (and a slave's MASTER_CERT_FINGERPRINT) needs the new "
        "certificate fingerprint, unless it is the public key's; restart mailrelay-web and "
        "mailrelay-shadow-receiver here"
    )


def cmd_migrate(args: argparse.Namespace) -> None:
    _settings()
    _run_db(migrate)
    print("database schema is up to date")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from app.tls import ensure_certificate

    settings = _settings()
    asyncio.run(check_database(settings.database_url))
    from app.web.app import create_app

    cert, key, generated = ensure_certificate(settings)
    if generated:
        print(f"generated a self-signed certificate: {cert}")
    _print_pins(cert)
    if args.migrate:
        _run_db(migrate)
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.https_host,
        port=args.port or settings.https_port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        # uvicorn's loggers go through app.logsetup's handler, not uvicorn's own.
        log_config=None,
        log_level="info",
        proxy_headers=False,
        server_header=False,
        # Named, not "auto": without the package uvicorn would fall back to h11 in silence.
        http="httptools",
        # The shadow milter's uvloop may be installed beside it (host installs): the web
        # manager keeps the event loop it is tested with.
        loop="asyncio",
    )


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise UserFacingError("no terminal for a password prompt: use --password-stdin")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat: "):
        raise UserFacingError("the two passwords differ")
    return first


def cmd_create_user(args: argparse.Namespace) -> None:
    from app.auth import users
    from app.auth.passwords import PasswordRuleError
    from app.auth.roles import Role

    _settings()
    try:
        role = Role.parse(args.role)
    except ValueError as exc:
        raise UserFacingError(str(exc)) from None
    password = _password(args)

    async def work() -> None:
        try:
            await users.create_user(args.username, password, role, actor="cli")
        except (users.UserError, PasswordRuleError) as exc:
            raise UserFacingError(str(exc)) from None

    _run_db(work)
    print(f"created {args.username} ({role.label}); the password must be changed at first login")


def cmd_create_first_admin(args: argparse.Namespace) -> None:
    """Only when there is no account at all: create `admin` with a random one-time password
    and print it (only it) on stdout, once; else print nothing and say so on stderr."""
    from app.auth import users

    _settings()
    password = _run_db(users.create_first_admin)
    if password is None:
        print("accounts exist already: no first admin created", file=sys.stderr)
        return
    print(password)


def cmd_reset_second_factor(args: argparse.Namespace) -> None:
    """The way back in for an Admin who lost every factor and every recovery code (the GUI's
    reset needs another Admin): remove the user's factors, end their sessions, audited."""
    from app.auth import mfa

    _settings()

    async def work() -> None:
        try:
            await mfa.reset(args.username, actor="cli", source_ip="")
        except mfa.MfaError as exc:
            raise UserFacingError(str(exc)) from None

    _run_db(work)
    print(f"removed the second factors of {args.username}; the next login enrols anew")


def cmd_reset_password(args: argparse.Namespace) -> None:
    from app.auth import users
    from app.auth.passwords import PasswordRuleError

    _settings()
    password = _password(args)

    async def work() -> None:
        try:
            await users.reset_password(args.username, password, actor="cli")
        except (users.UserError, PasswordRuleError) as exc:
            raise UserFacingError(str(exc)) from None

    _run_db(work)
    print(f"reset the password of {args.username}; it must be changed at the next login")


def cmd_ingest_logs(args: argparse.Namespace) -> None:
    from app.jobs import ingest

    settings = _settings()

    async def work() -> None:
        try:
            if not args.follow:
                await ingest.run_once(settings)
                return
            # --follow: the long-running reader of mailrelay-ingest-logs.service; SIGTERM or
            # SIGINT ends it between two runs, never inside a batch's transaction.
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await ingest.follow(settings, stop)
        except ingest.IngestError as exc:
            raise UserFacingError(str(exc)) from None

    _run_db(work)


def cmd_retention(args: argparse.Namespace) -> None:
    from app.jobs import retention

    settings = _settings()

    async def work() -> None:
        await retention.run_once(settings)

    _run_db(work)


def cmd_alerts(args: argparse.Namespace) -> None:
    from app.agent.client import AgentClient
    from app.alerts import run

    settings = _settings()

    async def work() -> None:
        # Listing a large queue for its oldest message may take the agent a while.
        await run.run_once(settings, AgentClient(settings.agent_socket, timeout=60))

    _run_db(work)


def cmd_config_pull(args: argparse.Namespace) -> None:
    from app.agent.client import AgentClient
    from app.cluster import pull
    from app.cluster.peer import PeerTls
    from app.crypto import SecretBox, SecretKeyError

    settings = _settings()
    master_tls = PeerTls.for_master(settings, required=settings.cluster_mode == "slave")
    try:
        box = SecretBox(settings.secret_key_file)
    except SecretKeyError as exc:
        raise UserFacingError(str(exc)) from None

    async def work() -> pull.PullResult:
        return await pull.run_once(settings, AgentClient(settings.agent_socket), box, master_tls)

    result = _run_db(work)
    if not result.ok:
        # The run's log line says why; a non-zero exit marks the unit failed for the operator.
        raise UserFacingError(f"config pull {result.outcome}")


def cmd_config_status(args: argparse.Namespace) -> None:
    """Which master version this node runs and whether that is what the master applied. Exit 0
    when ready; with --wait, poll until ready or the time is up."""
    import time

    from app.cluster import configstate

    settings = _settings()

    async def work() -> configstate.ConfigState:
        deadline = time.monotonic() + args.wait
        while True:
            state = await configstate.current(settings)
            if state.ready or time.monotonic() >= deadline:
                return state
            await asyncio.sleep(0.5)

    state = _run_db(work)
    own = state.node(settings.node_id)
    runs = own.master_number if own else None
    print(
        f"node {settings.node_id} ({settings.cluster_mode}) runs master version "
        f"{runs if runs is not None else 'none'}; the master runs "
        f"{state.master_applied if state.master_applied is not None else 'unknown'}"
    )
    if not state.ready:
        raise UserFacingError(f"not ready: {state.why_not_ready}")
    print("ready")


def _box(settings: Settings) -> Any:
    from app.crypto import SecretBox, ensure_secret_key

    ensure_secret_key(settings.secret_key_file)  # as `serve` does on first start
    return SecretBox(settings.secret_key_file)


def cmd_create_token(args: argparse.Namespace) -> None:
    from app.auth import tokens

    _settings()

    async def work() -> str:
        try:
            return await tokens.create(
                args.name,
                args.kind,
                actor="cli",
                networks=" ".join(args.allow_from),
                valid_days=args.valid_days,
            )
        except tokens.TokenError as exc:
            raise UserFacingError(str(exc)) from None

    # The token itself on stdout (and nothing else), for scripts; it is never shown again.
    print(_run_db(work))


def cmd_config_export(args: argparse.Namespace) -> None:
    """Write the configuration this node's Postfix runs as a file `config-import` takes: how a
    replacement master gets its configuration back from the surviving slave. The file holds the
    route passwords in clear (config-import encrypts them with its own key), so it is made
    0600 and never overwrites a file."""
    from app import backup

    settings = _settings()
    box = _box(settings)

    async def work() -> dict[str, Any]:
        try:
            return await backup.config_export(settings, box)
        except backup.BackupError as exc:
            raise UserFacingError(str(exc)) from None

    document = _run_db(work)
    try:
        descriptor = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UserFacingError(f"{args.file}: {exc}") from None
    with os.fdopen(descriptor, "wb") as out:
        out.write(backup.export_bytes(document))
    print(
        f"{args.file}: the configuration of master version {document['master_version']} "
        "(route passwords in clear: keep the file secret)"
    )


def cmd_backup(args: argparse.Namespace) -> None:
    """A dump of this node's database and its config export into BACKUP_DIR (the daily timer's
    job); the oldest beyond BACKUP_KEEP go."""
    from app import backup

    settings = _settings()
    stopped = asyncio.Event()

    async def work() -> backup.BackupResult:
        # systemd stops a run that outlives TimeoutStartSec with SIGTERM to the unit's whole
        # control group (pg_dump too): the run is cancelled, so that its partial dump goes
        # with it rather than stay on the disk (Python's default for SIGTERM ends the
        # process at once).
        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:
            stopped.set()
            task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
        try:
            return await backup.run_once(settings)
        except backup.BackupError as exc:
            raise UserFacingError(f"backup failed: {exc}") from None

    try:
        _run_db(work)
    except (asyncio.CancelledError, UserFacingError):
        # The cancellation may land after the dump's own end (pg_dump got the SIGTERM too, and
        # its thread returned first): wherever it lands, the run was stopped.
        if stopped.is_set():
            raise UserFacingError("backup stopped (SIGTERM); its partial dump is removed") from None
        raise


def cmd_restore(args: argparse.Namespace) -> None:
    """A dump of `mailrelay backup` into DATABASE_URL, only when that database is empty."""
    from app import backup

    settings = _settings()

    async def work() -> float:
        await check_database(settings.database_url)
        try:
            return await backup.restore(settings, Path(args.file), args.from_node)
        except backup.BackupError as exc:
            raise UserFacingError(str(exc)) from None

    asyncio.run(work())
    print(
        f"restored {args.file}; next: `mailrelay migrate` (a dump of an older release is "
        "brought up to date), then start the services"
    )


def _number_after(document: dict[str, Any], file: str) -> int:
    """The import's `master_version` (from config-export): its version is numbered past it."""
    value = document.pop("master_version", 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2**31 - 2:
        raise UserFacingError(f"{file}: master_version must be a whole number, not {value!r}")
    return value


def cmd_config_import(args: argparse.Namespace) -> None:
    """Replace the configuration with a snapshot file (a new version; the same checks as the
    GUI). The file holds sender_domains (with optional routes) and trusted_networks, and from
    config-export the master version it came from (the new version is numbered past it)."""
    import json

    from app.config import service, validation
    from app.config.validation import FieldErrors
    from app.messages import message_of

    settings = _settings()
    try:
        document = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"{args.file}: {exc}") from None
    if not isinstance(document, dict):
        raise UserFacingError(f"{args.file}: not a JSON object")
    number_after = _number_after(document, args.file)
    box = _box(settings)
    # Clear-text passwords in the file are encrypted here; they are never stored as given.
    for entry in document.get("sender_domains", []):
        route = entry.get("route") or {}
        if "auth_password" in route:
            try:
                password = validation.auth_password(str(route.pop("auth_password")))
            except ValueError as exc:
                raise UserFacingError(
                    f"{args.file}: {entry.get('name')}: {message_of(exc)}"
                ) from None
            route["auth_password_enc"] = box.encrypt(password)

    async def work() -> int:
        try:
            return await service.replace_all(
                service.Actor("cli"),
                document,
                "config.import",
                f"imported from {args.file}",
                number_after,
            )
        except FieldErrors as exc:
            raise UserFacingError(f"{args.file} refused: {exc}") from None

    print(f"config version {_run_db(work)} created; apply it with `mailrelay config-apply`")


def cmd_config_apply(args: argparse.Namespace) -> None:
    from app.agent.client import AgentClient
    from app.config import service
    from app.postfix import pipeline

    settings = _settings()

    async def work() -> pipeline.TestReport:
        latest = await service.latest_version()
        if latest is None:
            raise UserFacingError("there is no config version to apply")
        return await pipeline.apply_version(
            latest["number"],
            _box(settings),
            AgentClient(settings.agent_socket),
            settings.node_id,
            service.Actor("cli"),
        )

    report = _run_db(work)
    if not report.ok:
        raise UserFacingError("; ".join(report.problems))
    print(f"config version {report.version} applied on node {settings.node_id}")


def cmd_queue_sync(args: argparse.Namespace) -> None:
    from app.agent.client import AgentClient
    from app.replication import queuesync

    settings = _settings()
    from app.db import pool
    from app.piccolo_conf import DB

    async def connect() -> None:
        # Short: a run waits for this before it copies, and a database that cannot answer
        # in seconds is treated as down (the run copies and spools its record).
        await pool.start(min_size=1, max_size=2, timeout=5)

    async def work() -> queuesync.SyncResult:
        # Not _run_db: the VIP check comes first, and a run goes on when the database is down.
        try:
            return await queuesync.run_once(
                settings,
                AgentClient(settings.agent_socket, timeout=600),
                settings.sync_freeze,
                connect,
            )
        finally:
            if DB.pool is not None:
                await DB.close_connection_pool()

    result = asyncio.run(work())
    if result.outcome in ("failed", "conflict"):
        raise UserFacingError(f"queue sync {result.outcome}: {result.detail}")


def cmd_reconcile(args: argparse.Namespace) -> None:
    from app.agent.client import AgentClient
    from app.replication import reconcile

    settings = _settings()
    agent = AgentClient(settings.agent_socket)
    if not args.release:
        # Before the database is asked for anything: a node booting while its PostgreSQL is
        # down keeps its stale queue on hold rather than deliver it before it can reconcile.
        why = asyncio.run(reconcile.hold_first(settings, agent))
        if why:
            raise UserFacingError(f"{why}: Postfix delivers its queue as it is")

    async def work() -> Any:
        if args.release:
            return await reconcile.release_held(settings, agent, "cli", "")
        return await reconcile.run_once(settings, agent)

    result = _run_db(work)
    if args.release:
        print(f"released {result} held messages")
    elif result.outcome == "held":
        raise UserFacingError(f"{result.held} messages stay on hold: {result.detail}")


def cmd_switchover(args: argparse.Namespace) -> None:
    from app.agent.client import AgentClient
    from app.cluster import switchover

    settings = _settings()

    async def work() -> list[switchover.Step]:
        return await switchover.run(settings, AgentClient(settings.agent_socket), "cli")

    steps = _run_db(work)
    for step in steps:
        print(f"{step.name:<11} {step.outcome:<7} {step.seconds:6.2f} s  {step.detail}", flush=True)
    failed = next((step for step in steps if step.outcome == "failed"), None)
    total = sum(step.seconds for step in steps)
    if failed is not None:
        raise UserFacingError(f"switchover failed at step {failed.name} after {total:.2f} s")
    print(f"switchover done in {total:.2f} s")


def cmd_keepalived_config(args: argparse.Namespace) -> None:
    from app.cluster.keepalived import KeepalivedConfigError, render_from_settings

    try:
        print(render_from_settings(_settings()), end="")
    except KeepalivedConfigError as exc:
        raise UserFacingError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mailrelay", description="mailrelay-ha node commands")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the GUI and API over HTTPS")
    serve.add_argument("--host", help="bind address (default HTTPS_HOST)")
    serve.add_argument("--port", type=int, help="port (default HTTPS_PORT, 8443)")
    serve.add_argument("--migrate", action="store_true", help="apply migrations first")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser(
        "renew-cert", help="a new certificate for the generated key (the key's pin stays)"
    ).set_defaults(func=cmd_renew_cert)
    create = sub.add_parser("create-user", help="create a GUI user")
    create.add_argument("username")
    create.add_argument("--role", default="readonly", help="admin, operator or readonly")
    create.add_argument("--password-stdin", action="store_true")
    create.set_defaults(func=cmd_create_user)
    sub.add_parser(
        "create-first-admin",
        help="no account yet: create admin with a random one-time password (printed once)",
    ).set_defaults(func=cmd_create_first_admin)
    reset = sub.add_parser("reset-password", help="set a new password, to be changed at login")
    reset.add_argument("username")
    reset.add_argument("--password-stdin", action="store_true")
    reset.set_defaults(func=cmd_reset_password)
    factors = sub.add_parser(
        "reset-second-factor", help="remove a user's second factors (lost phone or key)"
    )
    factors.add_argument("username")
    factors.set_defaults(func=cmd_reset_second_factor)
    ingest = sub.add_parser("ingest-logs", help="read new Postfix log lines into the database")
    ingest.add_argument(
        "--follow",
        action="store_true",
        help="keep reading the log (every 0.25 s) until SIGTERM",
    )
    ingest.set_defaults(func=cmd_ingest_logs)
    sub.add_parser(
        "retention", help="drop old log days, delete old rows, make partitions ahead"
    ).set_defaults(func=cmd_retention)
    sub.add_parser(
        "alerts", help="check the alert conditions once; e-mail or POST what started or cleared"
    ).set_defaults(func=cmd_alerts)
    sub.add_parser(
        "config-pull", help="slave: fetch the master's config version and apply it if newer"
    ).set_defaults(func=cmd_config_pull)
    status = sub.add_parser(
        "config-status", help="is this node ready: does it run the version the master applied?"
    )
    status.add_argument("--wait", type=float, default=0.0, help="seconds to wait for ready")
    status.set_defaults(func=cmd_config_status)
    token = sub.add_parser("create-token", help="create an API token (printed once)")
    token.add_argument("name")
    token.add_argument("--kind", default="read", help="read, write or cluster")
    token.add_argument(
        "--allow-from",
        action="append",
        default=[],
        metavar="CIDR",
        help="accept the token only from this network (repeatable; default: from anywhere)",
    )
    token.add_argument(
        "--valid-days", default=None, metavar="DAYS", help="expire after DAYS (default: never)"
    )
    token.set_defaults(func=cmd_create_token)
    imp = sub.add_parser("config-import", help="replace the configuration with a JSON snapshot")
    imp.add_argument("file")
    imp.set_defaults(func=cmd_config_import)
    exp = sub.add_parser(
        "config-export",
        help="write the configuration this node runs to a new file, for config-import on a "
        "replacement master",
    )
    exp.add_argument("file")
    exp.set_defaults(func=cmd_config_export)
    sub.add_parser(
        "backup", help="dump the database and the config export into BACKUP_DIR, rotated"
    ).set_defaults(func=cmd_backup)
    res = sub.add_parser("restore", help="restore a dump of `backup` into an empty database")
    res.add_argument("file")
    res.add_argument(
        "--from-node",
        metavar="NODE",
        help="whose dump it is, when its name does not say or it is not this node's",
    )
    res.set_defaults(func=cmd_restore)
    sub.add_parser(
        "config-apply", help="apply the newest config version on this node"
    ).set_defaults(func=cmd_config_apply)
    sub.add_parser(
        "queue-sync", help="copy the queue to the peer's replica (only on the VIP owner)"
    ).set_defaults(func=cmd_queue_sync)
    rec = sub.add_parser("reconcile", help="a returning node: drop what the peer took over")
    rec.add_argument("--release", action="store_true", help="release mail held by a failed run")
    rec.set_defaults(func=cmd_reconcile)
    sub.add_parser(
        "switchover", help="the active node hands the VIP and its queue to the peer (planned)"
    ).set_defaults(func=cmd_switchover)
    sub.add_parser(
        "keepalived-config", help="print keepalived.conf rendered from this node's settings"
    ).set_defaults(func=cmd_keepalived_config)
    from app.agent.__main__ import add_commands as add_agent_commands

    agent = sub.add_parser("agent", help="the privileged agent (root): serve, postfix-settings")
    add_agent_commands(agent.add_subparsers(dest="agent_command", required=True))
    return top


def main(argv: list[str] | None = None) -> int:
    logsetup.configure()
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (SettingsError, UserFacingError, AgentError, SecretKeyError) as exc:
        logsetup.error_line(f"mailrelay: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
