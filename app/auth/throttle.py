"""Login throttling: failures slow the next attempt, then lock the account and the address.

Both counters live in PostgreSQL so that they hold across workers and restarts.
"""

from __future__ import annotations

import datetime as dt

from app.db.tables import AddressThrottle, AppUser

SLOWDOWN_AFTER = 3  # failures before each further attempt is answered late
LOCK_AFTER = 5  # failures that lock the account or the address
LOCK_MINUTES = 15
DELAY_STEP_SECONDS = 0.5
MAX_DELAY_SECONDS = 3.0


def delay_for(failures: int) -> float:
    if failures < SLOWDOWN_AFTER:
        return 0.0
    return min(MAX_DELAY_SECONDS, DELAY_STEP_SECONDS * (failures - SLOWDOWN_AFTER + 1))


async def address_state(address: str) -> tuple[int, dt.datetime | None]:
    row = await AddressThrottle.select().where(AddressThrottle.address == address).first()
    if row is None:
        return 0, None
    return row["failures"], row["locked_until"]


def is_locked(locked_until: dt.datetime | None) -> bool:
    return locked_until is not None and locked_until > dt.datetime.now(dt.UTC)


async def record_failure(address: str, user_id: int | None) -> None:
    now = dt.datetime.now(dt.UTC)
    lock_until = now + dt.timedelta(minutes=LOCK_MINUTES)
    # One statement each, so that two concurrent failures both count.
    await AddressThrottle.raw(
        "INSERT INTO address_throttle (address, failures, last_failure_at, locked_until) "
        "VALUES ({}, 1, {}, NULL) ON CONFLICT (address) DO UPDATE SET "
        "failures = address_throttle.failures + 1, last_failure_at = EXCLUDED.last_failure_at, "
        "locked_until = CASE WHEN address_throttle.failures + 1 >= {} THEN {}::timestamptz "
        "ELSE address_throttle.locked_until END",
        address,
        now,
        LOCK_AFTER,
        lock_until,
    )
    if user_id is not None:
        await AppUser.raw(
            "UPDATE app_users SET failed_logins = failed_logins + 1, locked_until = CASE "
            "WHEN failed_logins + 1 >= {} THEN {}::timestamptz ELSE locked_until END "
            "WHERE id = {}",
            LOCK_AFTER,
            lock_until,
            user_id,
        )


async def record_success(address: str, user_id: int) -> None:
    await AddressThrottle.delete().where(AddressThrottle.address == address)
    await AppUser.update(
        {
            AppUser.failed_logins: 0,
            AppUser.locked_until: None,
            AppUser.last_login_at: dt.datetime.now(dt.UTC),
        }
    ).where(AppUser.id == user_id)
