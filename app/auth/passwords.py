"""Password hashing (argon2id) and the rules a new password must meet."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.messages import Message

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters

MIN_LENGTH = 12
# Verifying against this hash when the user does not exist keeps the timing of a login attempt the
# same for known and unknown usernames.
_DUMMY_HASH = _hasher.hash("not-a-real-password-0000")


# Each argon2 run takes about 0.2 s of one core and 64 MiB: at most this many run at once, in
# worker threads, so that a burst of logins neither stalls the event loop nor eats the memory.
VERIFY_SLOTS = 2
# How long a login waits for a free slot before it is answered as failed (no queue that grows).
VERIFY_WAIT_SECONDS = 0.4
_slots = asyncio.Semaphore(VERIFY_SLOTS)


class PasswordRuleError(ValueError):
    pass


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password_bounded(password_hash: str | None, password: str) -> bool | None:
    """verify_password in a worker thread; None when no slot came free in time."""
    try:
        async with asyncio.timeout(VERIFY_WAIT_SECONDS):
            await _slots.acquire()
    except TimeoutError:
        return None
    try:
        return await asyncio.to_thread(verify_password, password_hash, password)
    finally:
        _slots.release()


def check_new_password(username: str, new: str, old_hash: str | None = None) -> None:
    """Raise PasswordRuleError with the rule the password breaks."""
    if len(new) < MIN_LENGTH:
        raise PasswordRuleError(
            Message("The password must have at least {n} characters.", n=MIN_LENGTH)
        )
    if new.strip().lower() == username.strip().lower():
        raise PasswordRuleError(Message("The password must not be the username."))
    if any(ord(c) < 32 or ord(c) == 127 for c in new):
        raise PasswordRuleError(Message("The password must not contain control characters."))
    if old_hash is not None and verify_password(old_hash, new):
        raise PasswordRuleError(Message("The new password must differ from the old one."))
