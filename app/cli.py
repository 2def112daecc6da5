"""The `mailrelay` command. A user error is one clear line on stderr and exit status 1/2."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from app.agent.postfix import AgentError
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
        from app.piccolo_conf import DB

        await DB.start_connection_pool(min_size=1, max_size=2)
        try:
            return await work()
        finally:
            await DB.close_connection_pool()

    return asyncio.run(wrapped())


async def migrate() -> None:
    from piccolo.apps.migrations.commands.forwards import run_forwards

    result = await run_forwards(app_name="mailrelay")
    if not result.success:
        raise UserFacingError(f"migration failed: {result.message}")


def cmd_migrate(args: argparse.Namespace) -> None:
    _settings()
    _run_db(migrate)
    print("database schema is up to date")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from app.tls import ensure_certificate, fingerprint

    settings = _settings()
    asyncio.run(check_database(settings.database_url))
    from app.web.app import create_app

    cert, key, generated = ensure_certificate(settings)
    if generated:
        print(f"generated a self-signed certificate: {cert}")
    print(f"HTTPS certificate SHA-256 fingerprint: {fingerprint(cert)}", flush=True)
    if args.migrate:
        _run_db(migrate)
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.https_host,
        port=args.port or settings.https_port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level="info",
        proxy_headers=False,
        server_header=False,
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
            # --follow: a long-running reader (e.g. under a plain service instead of the timer);
            # SIGTERM or SIGINT ends it between two runs, never inside a batch's transaction.
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            while not stop.is_set():
                await ingest.run_once(settings)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2)
        except ingest.IngestError as exc:
            raise UserFacingError(str(exc)) from None

    _run_db(work)


def cmd_retention(args: argparse.Namespace) -> None:
    from app.jobs import retention

    settings = _settings()

    async def work() -> None:
        await retention.run_once(settings)

    _run_db(work)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mailrelay", description="mailrelay-ha node commands")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the GUI and API over HTTPS")
    serve.add_argument("--host", help="bind address (default HTTPS_HOST)")
    serve.add_argument("--port", type=int, help="port (default HTTPS_PORT, 8443)")
    serve.add_argument("--migrate", action="store_true", help="apply migrations first")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    create = sub.add_parser("create-user", help="create a GUI user")
    create.add_argument("username")
    create.add_argument("--role", default="readonly", help="admin, operator or readonly")
    create.add_argument("--password-stdin", action="store_true")
    create.set_defaults(func=cmd_create_user)
    reset = sub.add_parser("reset-password", help="set a new password, to be changed at login")
    reset.add_argument("username")
    reset.add_argument("--password-stdin", action="store_true")
    reset.set_defaults(func=cmd_reset_password)
    ingest = sub.add_parser("ingest-logs", help="read new Postfix log lines into the database")
    ingest.add_argument(
        "--follow", action="store_true", help="keep reading every 2 s until SIGTERM"
    )
    ingest.set_defaults(func=cmd_ingest_logs)
    sub.add_parser("retention", help="delete log rows older than RETENTION_DAYS").set_defaults(
        func=cmd_retention
    )
    from app.agent.__main__ import add_commands as add_agent_commands

    agent = sub.add_parser("agent", help="the privileged agent (root): serve, postfix-settings")
    add_agent_commands(agent.add_subparsers(dest="agent_command", required=True))
    return top


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("piccolo").setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (SettingsError, UserFacingError, AgentError) as exc:
        print(f"mailrelay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
