"""The app leaves no state in a database session that outlives its transaction: the pool hands
connections back without asyncpg's reset query (app/db/pool.py), so a session-level SET, a
session advisory lock, a LISTEN or a held cursor would reach the next request that gets the
connection. Every string constant under app/ (its SQL; migrations, which run in a process of
their own, left out) is searched for them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import app

PACKAGE = Path(app.__file__).parent

# Each with what it would leave behind.
SESSION_STATE = {
    "a session-level setting (SET without LOCAL)": re.compile(
        r"(?:^|;)\s*SET\s+(?!LOCAL\b)(?:SESSION\s+)?[a-z_.]+\s*(?:=|TO\b)", re.I
    ),
    "a session-level setting (set_config with is_local false)": re.compile(
        r"set_config\s*\([^)]*,\s*false\s*\)", re.I
    ),
    "a session advisory lock": re.compile(r"pg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.I),
    "a LISTEN": re.compile(r"(?:^|;)\s*(?:UN)?LISTEN\s", re.I),
    "a cursor held past its transaction": re.compile(r"\bWITH\s+HOLD\b", re.I),
}


def session_state(sql: str) -> list[str]:
    """What `sql` would leave in the session after its transaction, by SESSION_STATE's names."""
    return [name for name, pattern in SESSION_STATE.items() if pattern.search(sql)]


def strings(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module but its docstrings (f-strings by their literal
    parts), with its line."""
    tree = ast.parse(path.read_text(), str(path))
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, documented) and node.body and isinstance(node.body[0], ast.Expr)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "SET statement_timeout = 0",
        "set work_mem TO '64MB'",
        "BEGIN; SET SESSION lock_timeout = '1s'",
        "SELECT set_config('jit', 'off', false)",
        "SELECT pg_advisory_lock(42)",
        "SELECT pg_try_advisory_lock_shared(1, 2)",
        "LISTEN config_changed",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    ],
)
def test_each_kind_of_session_state_is_recognised(sql: str) -> None:
    assert session_state(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SET LOCAL plan_cache_mode = force_custom_plan",
        "SELECT set_config('jit', 'off', true), set_config('enable_bitmapscan', 'off', true)",
        "SELECT pg_advisory_xact_lock({})",
        "UPDATE log_cursors SET inode = {}, position = {} WHERE source = {}",
        "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = EXCLUDED.a",
    ],
)
def test_what_ends_with_its_transaction_is_not_taken_for_session_state(sql: str) -> None:
    assert session_state(sql) == []


def test_no_module_of_the_app_leaves_session_state() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name}: {text[:80]!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "migrations" not in path.parts
        for line, text in strings(path)
        for name in session_state(text)
    ]
    assert found == []
