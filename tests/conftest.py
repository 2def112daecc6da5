"""Test fixtures: one real PostgreSQL cluster for the session, a clean database per test, the app
in-process over HTTPS scope, and clients logged in as admin, operator and read-only users.

The cluster starts in pytest_configure, before any test module imports the app, because Piccolo
reads DATABASE_URL when app.piccolo_conf is first imported.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.pgcluster import PostgresCluster

_cluster: PostgresCluster | None = None
STATE_DIR = Path(tempfile.mkdtemp(prefix="mailrelay-test-state-"))
BASE_URL = "https://testserver.local"
PASSWORD = "correct-horse-battery"


def pytest_configure(config: pytest.Config) -> None:
    global _cluster
    if hasattr(config, "workerinput"):
        return
    _cluster = PostgresCluster().start()
    os.environ["DATABASE_URL"] = _cluster.create_database("mailrelay_test")
    os.environ["PICCOLO_CONF"] = "app.piccolo_conf"
    os.environ["STATE_DIR"] = str(STATE_DIR)
    os.environ["HTMX_SOURCE"] = "local"
    os.environ.pop("CLUSTER_MODE", None)

    from piccolo.apps.migrations.commands.forwards import run_forwards

    result = asyncio.run(run_forwards(app_name="mailrelay"))
    assert result.success, result.message


def pytest_unconfigure(config: pytest.Config) -> None:
    if _cluster is not None:
        _cluster.stop()
    # Each run made one; left behind, a machine that runs the suite for years fills /tmp.
    shutil.rmtree(STATE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> PostgresCluster:
    assert _cluster is not None
    return _cluster


TABLES = (
    "user_sessions, login_throttle, relay_routes, sender_domains, trusted_networks, "
    "config_versions, applied_versions, audit_log, mail_logs, rejection_logs, cluster_locks, "
    "api_tokens, app_users, log_cursors, log_messages, vrrp_events, promotions, sync_runs, "
    "queue_imports, "
    "second_factors, recovery_codes, second_factor_policy, session_second_factor, "
    "second_factor_throttle, sync_run_totals, traffic_totals, alert_state, alert_notices"
)


# The first admin's one-time password, as `mailrelay create-first-admin` makes one at install:
# random, never a password anyone else knows.
FIRST_ADMIN_PASSWORD = "first-" + secrets.token_urlsafe(12)


@functools.cache
def _first_admin_hash() -> str:
    from app.auth.passwords import hash_password

    return hash_password(FIRST_ADMIN_PASSWORD)


@pytest.fixture(autouse=True)
async def clean_db() -> AsyncIterator[None]:
    from app.db.tables import AppUser

    await AppUser.raw(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    # What create_first_admin() leaves after an install (with the hash made once per session).
    await AppUser.raw(
        "INSERT INTO app_users (username, password_hash, role, must_change_password, "
        "failed_logins, created_at) VALUES ('admin', {}, 'admin', true, 0, now())",
        _first_admin_hash(),
    )
    yield


@pytest.fixture(scope="session")
def settings() -> Any:
    from app.settings import load_settings

    return load_settings()


@pytest.fixture(scope="session")
async def app(settings: Any) -> AsyncIterator[Any]:
    """The app, with what its startup hook does (pool; first admin per test in clean_db) done
    here in the tests' event loop: Litestar's lifespan task group cannot span fixture tasks."""
    from app.db import pool
    from app.piccolo_conf import DB
    from app.web.app import create_app

    application = create_app(settings)
    await pool.start_for_pages(min_size=1, max_size=10)
    yield application
    await DB.close_connection_pool()


def http_client(app: Any, address: str = "198.18.0.30") -> Any:
    """An HTTP client that talks ASGI to the app in-process from `address`; https scope, so
    Secure cookies flow as they would in a browser."""
    import httpx

    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(address, 50000)), base_url=BASE_URL
    )


@pytest.fixture
async def client(app: Any) -> AsyncIterator[Any]:
    async with http_client(app) as c:
        yield c


@functools.cache
def _hash(password: str) -> str:
    from app.auth.passwords import hash_password

    return hash_password(password)


async def make_user(username: str, role: str, password: str = PASSWORD) -> None:
    """A user whose first-login password change is already done (the argon2 hash is made once
    per password and session: hashing is deliberately slow)."""
    from app.db.tables import AppUser

    await AppUser.insert(
        AppUser(
            username=username,
            password_hash=_hash(password),
            role=role,
            must_change_password=False,
            created_at=dt.datetime.now(dt.UTC),
        )
    )


def csrf(client: Any) -> dict[str, str]:
    """The header HTMX sends: the CSRF token from the cookie the server set."""
    from app.web.app import CSRF_COOKIE

    token = client.cookies.get(CSRF_COOKIE)
    if token is None:
        raise AssertionError("no CSRF cookie yet: GET a page first")
    return {"x-csrftoken": token}


async def login(client: Any, username: str, password: str = PASSWORD) -> Any:
    await client.get("/login")
    return await client.post(
        "/login",
        data={"username": username, "password": password},
        headers=csrf(client),
        follow_redirects=False,
    )


@pytest.fixture
async def login_as(app: Any) -> AsyncIterator[Callable[[str], Awaitable[Any]]]:
    """login_as("operator") -> a client logged in as a fresh user `operator-user`."""
    opened: list[Any] = []

    async def factory(role: str) -> Any:
        await make_user(f"{role}-user", role)
        c = http_client(app)
        await c.__aenter__()
        opened.append(c)
        response = await login(c, f"{role}-user")
        assert response.status_code == 303, response.text
        return c

    yield factory
    for c in opened:
        await c.__aexit__(None, None, None)
