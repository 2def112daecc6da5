"""Login throttling: a score per username and per source network that each attempt raises and
time drains; while a score is full, attempts are refused without looking at the password.

Nothing locks for good: a refused attempt adds nothing, and a full score drains one failure
every DRAIN_SECONDS, so it is empty a few minutes after the last attempt. Unknown usernames get
a score like real ones (the throttle must not tell which accounts exist). The scores live in
PostgreSQL, so they hold across workers and restarts, and an attempt is counted by one
conditional statement per score before its password is checked: parallel guesses cannot pass
the limit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import time

from app.db.tables import LoginThrottle

DRAIN_SECONDS = 120.0  # one counted attempt stops counting after this long
ACCOUNT_LIMIT = 5  # attempts in a row on one username before the next are refused
NETWORK_LIMIT = 10  # from one IPv4 address or one IPv6 /64 (offices share one address)
IPV6_PREFIX = 64  # an IPv6 client is given a whole /64 and can rotate through it
# Every failed login is answered this long after it arrived, whatever went wrong: a refused
# attempt (no argon2 run) must not be told apart from a wrong password by its timing.
FAILURE_ANSWER_SECONDS = 1.0


class _Full(Exception):
    """A score is full: undo the counts this attempt made so far."""


def network_of(address: str) -> str:
    """The throttled unit: an IPv4 address, or the /64 of an IPv6 one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]  # not an IP address (a unix socket): taken as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


def _keys(username: str, address: str) -> list[tuple[str, int]]:
    # Always the network first, then the username: one order for every transaction, no deadlock.
    return [(f"net:{network_of(address)}", NETWORK_LIMIT), (f"user:{username}", ACCOUNT_LIMIT)]


# Each statement works on the score as it stands now, drained since it was last counted:
# greatest(0, score - seconds since updated_at / DRAIN_SECONDS).
_COUNT = (
    "INSERT INTO login_throttle AS t (key, score, updated_at) VALUES ({}, 1, now()) "
    "ON CONFLICT (key) DO UPDATE SET updated_at = now(), score = greatest(0, t.score - "
    "extract(epoch FROM now() - t.updated_at)::float8 / {}::float8) + 1 "
    "WHERE greatest(0, t.score - extract(epoch FROM now() - t.updated_at)::float8 / {}::float8) "
    "+ 1 <= {} RETURNING score"
)
_UNCOUNT = (
    "UPDATE login_throttle AS t SET updated_at = now(), score = greatest(0, t.score - "
    "extract(epoch FROM now() - t.updated_at)::float8 / {}::float8 - 1) WHERE t.key = {}"
)


async def count_attempt(username: str, address: str) -> bool:
    """Count one attempt for the username and the network; False (nothing counted) when either
    score is full."""
    try:
        async with LoginThrottle._meta.db.transaction():
            for key, limit in _keys(username, address):
                if not await LoginThrottle.raw(_COUNT, key, DRAIN_SECONDS, DRAIN_SECONDS, limit):
                    raise _Full
    except _Full:
        return False
    finally:
        await _forget_drained()
    return True


async def uncount_attempt(username: str, address: str) -> None:
    """Take back an attempt whose password was right, or was never checked."""
    for key, _limit in _keys(username, address):
        await LoginThrottle.raw(_UNCOUNT, DRAIN_SECONDS, key)


async def forget_username(username: str) -> None:
    """Empty a username's score (an Admin reset its password)."""
    await LoginThrottle.delete().where(LoginThrottle.key == f"user:{username}")


async def refused_until() -> dict[str, dt.datetime]:
    """Usernames whose score is full now, and when their next attempt will be counted again."""
    rows = await LoginThrottle.raw(
        "SELECT substr(key, 6) AS username, updated_at + make_interval(secs => "
        "(score - ({} - 1)) * {}::float8) AS until FROM login_throttle "
        "WHERE key LIKE 'user:%' AND updated_at + make_interval(secs => "
        "(score - ({} - 1)) * {}::float8) > now()",
        ACCOUNT_LIMIT,
        DRAIN_SECONDS,
        ACCOUNT_LIMIT,
        DRAIN_SECONDS,
    )
    return {row["username"]: row["until"] for row in rows}


async def answer_late(started: float) -> None:
    """Wait until FAILURE_ANSWER_SECONDS after `started` (a time.monotonic() value)."""
    await asyncio.sleep(max(0.0, started + FAILURE_ANSWER_SECONDS - time.monotonic()))


async def _forget_drained() -> None:
    # Guessing random usernames adds rows; once drained they say nothing and can go.
    await LoginThrottle.raw(
        "DELETE FROM login_throttle "
        "WHERE now() - updated_at >= score * {}::float8 * interval '1 second'",
        DRAIN_SECONDS,
    )
