"""The connection pool every process of the app opens (Piccolo's engine, asyncpg's pool)."""

from __future__ import annotations

import asyncpg

from app.piccolo_conf import DB


async def keep_session(connection: asyncpg.Connection) -> None:
    """What a connection goes back to the pool with: nothing to undo.

    By default asyncpg's pool sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;` each time a connection goes back, one more round trip per query: a dashboard
    page, which runs seven, took 7.8 ms instead of 6.2 (one client, in-process, alternated).
    The app leaves no state in a session to undo: its settings are SET LOCAL or
    set_config(..., true), its advisory locks pg_advisory_xact_lock, it never LISTENs or
    keeps a cursor past its transaction (tests/unit/test_session_state.py holds app/ to
    that). A transaction left open is still rolled back, by asyncpg, before this is called."""


async def start(min_size: int, max_size: int, **options: object) -> None:
    """Open DB's pool; `options` go to asyncpg.create_pool (e.g. timeout)."""
    await DB.start_connection_pool(
        min_size=min_size, max_size=max_size, reset=keep_session, **options
    )
