"""The pool the app opens (app/db/pool.py, as the `app` fixture opens it): a connection goes back
without asyncpg's reset query, and a transaction left open is still rolled back."""

from __future__ import annotations

from typing import Any

from app.db.tables import LoginThrottle
from app.piccolo_conf import DB


async def test_the_pool_hands_connections_back_without_a_reset_query(app: Any) -> None:
    assert DB.pool is not None
    async with DB.pool.acquire() as connection:
        backend = await connection.fetchval("SELECT pg_backend_pid()")
        # What the app never does (tests/unit/test_session_state.py): state that outlives the
        # transaction. Here it shows whether RESET ALL ran when the connection went back.
        await connection.execute("SET work_mem = '1234kB'")
    # The pool hands out the connection it took back last.
    async with DB.pool.acquire() as connection:
        assert await connection.fetchval("SELECT pg_backend_pid()") == backend
        assert await connection.fetchval("SHOW work_mem") == "1234kB"
        await connection.execute("RESET work_mem")


async def test_a_transaction_left_open_is_rolled_back_when_its_connection_goes_back(
    app: Any,
) -> None:
    assert DB.pool is not None
    async with DB.pool.acquire() as connection:
        backend = await connection.fetchval("SELECT pg_backend_pid()")
        await connection.execute("BEGIN")
        await connection.execute(
            "INSERT INTO login_throttle (key, score, updated_at) "
            "VALUES ('user:left-open', 1, now())"
        )
    async with DB.pool.acquire() as connection:
        assert await connection.fetchval("SELECT pg_backend_pid()") == backend
        assert not connection.is_in_transaction()
    assert not await LoginThrottle.exists().where(LoginThrottle.key == "user:left-open")
