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


# The web app's connections plan every statement for the values it is run with, and cost a page
# read out of order as memory or SSD do: message tracking's searches need both
# (reports.search_messages says why). As the connections' startup parameters they cost a
# search nothing; set in each search's transaction (SET LOCAL) they took about 1 ms more a
# search, three round trips (in-process, alternated rounds of 300 Message-ID searches:
# 3.4 against 2.4 ms). Startup parameters override the database's and the role's defaults.
PAGE_SETTINGS = {"plan_cache_mode": "force_custom_plan", "random_page_cost": "1.1"}


async def start_for_pages(min_size: int, max_size: int) -> None:
    """The web app's pool: `start` with PAGE_SETTINGS."""
    await start(min_size, max_size, server_settings=PAGE_SETTINGS)
