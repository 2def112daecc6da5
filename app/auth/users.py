"""Users: the first-start admin, login, password changes, and what Admins do to accounts."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import time
from dataclasses import dataclass

from app import audit
from app.auth import sessions, throttle
from app.auth.passwords import (
    check_new_password,
    hash_password,
    verify_password_bounded,
)
from app.auth.roles import Role
from app.db.tables import AppUser
from app.messages import Message

FIRST_ADMIN = "admin"
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class UserError(ValueError):
    pass


@dataclass(frozen=True)
class LoginResult:
    """A session token, or None: every failure looks the same to the caller."""

    token: str | None = None
    must_change_password: bool = False


async def create_first_admin() -> str | None:
    """When there is no account at all, create `admin` with a random one-time password (to be
    changed at the first login) and return that password; None when any account exists. No
    account ever has a password anyone else knows: the caller shows it once (install-node keeps
    it in a root-only file). Two callers at once create one admin; the other gets None."""
    if await AppUser.count() > 0:
        return None
    password = secrets.token_urlsafe(18)  # 24 characters, 144 random bits
    created = await AppUser.raw(
        "INSERT INTO app_users (username, password_hash, role, must_change_password, "
        "failed_logins, created_at) VALUES ({}, {}, 'admin', true, 0, now()) "
        "ON CONFLICT (username) DO NOTHING RETURNING id",
        FIRST_ADMIN,
        await asyncio.to_thread(hash_password, password),
    )
    if not created:
        return None
    await audit.record("install", "user.create", FIRST_ADMIN, after={"role": "admin"})
    return password


async def authenticate(username: str, password: str, source_ip: str) -> LoginResult:
    """Log in, or fail with one answer at one time whatever went wrong (the audit says what).

    The attempt is counted against the username and the source network before the password is
    checked; while either score is full, the password is not checked at all.
    """
    started = time.monotonic()
    # Bounded and without NUL (PostgreSQL text cannot hold it): the name is also the score's key.
    name = username.strip().lower().replace("\x00", "\ufffd")[:100]
    if not await throttle.count_attempt(name, source_ip):
        reason = "throttled"
    else:
        user = None
        if USERNAME_RE.match(name):
            user = await AppUser.objects().where(AppUser.username == name).first()
        # An unknown user is checked against a dummy hash: same work, same time.
        right = await verify_password_bounded(user.password_hash if user else None, password)
        if right and user is not None:
            return await _logged_in(user, source_ip)
        if right is None:
            await throttle.uncount_attempt(name, source_ip)  # the password was never checked
        reason = "busy" if right is None else "wrong password" if user else "unknown user"
    await audit.record(name or "-", "login", "", source_ip, "failed", after={"reason": reason})
    await throttle.answer_late(started)
    return LoginResult()


async def _logged_in(user: AppUser, source_ip: str) -> LoginResult:
    await throttle.uncount_attempt(user.username, source_ip)
    await AppUser.update({AppUser.last_login_at: dt.datetime.now(dt.UTC)}).where(
        AppUser.id == user.id
    )
    token = await sessions.create_session(user.id, source_ip)
    await audit.record(user.username, "login", "", source_ip, "ok")
    return LoginResult(token, user.must_change_password)


async def change_password(user: sessions.SessionUser, old: str, new: str, source_ip: str) -> None:
    """Check the old password and the rules, store the new hash, end every other session.

    The old password is checked as a login checks it: counted against the login throttle
    first, in a worker thread, and a failure audited. Otherwise a session (a stolen cookie, an
    unattended browser) could guess the password without limit and without a trace."""
    row = await AppUser.objects().where(AppUser.id == user.id).first()
    if row is None:
        raise UserError(WRONG_CURRENT_PASSWORD)
    reason = "throttled"
    if await throttle.count_attempt(row.username, source_ip):
        right = await verify_password_bounded(row.password_hash, old)
        if right is not False:  # right, or never checked (no worker came free)
            await throttle.uncount_attempt(row.username, source_ip)
        reason = "" if right else "busy" if right is None else "wrong password"
    if reason:
        await audit.record(
            row.username, "password.change", row.username, source_ip, "failed",
            after={"reason": reason},
        )  # fmt: skip
        raise UserError(WRONG_CURRENT_PASSWORD)
    await asyncio.to_thread(check_new_password, row.username, new, row.password_hash)
    new_hash = await asyncio.to_thread(hash_password, new)
    await AppUser.update(
        {AppUser.password_hash: new_hash, AppUser.must_change_password: False}
    ).where(AppUser.id == user.id)
    await sessions.end_other_sessions(user.id, keep_session_id=user.session_id)
    await audit.record(user.username, "password.change", user.username, source_ip)


# One answer for a wrong password and a full throttle alike, as at the login.
WRONG_CURRENT_PASSWORD = Message(
    "The current password is wrong, or there were too many attempts: wait a few minutes and "
    "try again."
)


def _check_username(username: str) -> str:
    username = username.strip().lower()
    if not USERNAME_RE.match(username):
        raise UserError(
            Message("A username has 2-64 characters: lowercase letters, digits, '.', '_' or '-'.")
        )
    return username


async def create_user(
    username: str, password: str, role: Role, actor: str, source_ip: str = ""
) -> None:
    username = _check_username(username)
    check_new_password(username, password)
    if await AppUser.exists().where(AppUser.username == username):
        raise UserError(Message("The user {name} exists already.", name=username))
    password_hash = await asyncio.to_thread(hash_password, password)  # argon2: off the loop
    async with AppUser._meta.db.transaction():
        await AppUser.insert(
            AppUser(
                username=username,
                password_hash=password_hash,
                role=role.name,
                must_change_password=True,
                created_at=dt.datetime.now(dt.UTC),
            )
        )
        await audit.record(actor, "user.create", username, source_ip, after={"role": role.name})


async def reset_password(username: str, password: str, actor: str, source_ip: str = "") -> None:
    """Set a new password that its owner must change at the next login; unlock the account."""
    username = _check_username(username)
    row = await AppUser.objects().where(AppUser.username == username).first()
    if row is None:
        raise UserError(Message("There is no user {name}.", name=username))
    check_new_password(username, password)
    password_hash = await asyncio.to_thread(hash_password, password)
    async with AppUser._meta.db.transaction():
        await AppUser.update(
            {
                AppUser.password_hash: password_hash,
                AppUser.must_change_password: True,
            }
        ).where(AppUser.id == row.id)
        await throttle.forget_username(username)
        await sessions.end_other_sessions(row.id, keep_session_id=None)
        await audit.record(actor, "user.reset_password", username, source_ip)


async def set_role(username: str, role: Role, actor: str, source_ip: str) -> None:
    row = await AppUser.objects().where(AppUser.username == username).first()
    if row is None:
        raise UserError(Message("There is no user {name}.", name=username))
    if row.role == Role.admin.name and role != Role.admin and await _last_admin(row.id):
        raise UserError(Message("The last Admin cannot lose the Admin role."))
    async with AppUser._meta.db.transaction():
        await AppUser.update({AppUser.role: role.name}).where(AppUser.id == row.id)
        if role.name != row.role:
            # What a session may skip (the second factor) was settled at its login for the
            # role then: a promoted user's open session must not carry the new role without it.
            await sessions.end_other_sessions(row.id, keep_session_id=None)
        await audit.record(
            actor,
            "user.role",
            username,
            source_ip,
            before={"role": row.role},
            after={"role": role.name},
        )


async def delete_user(username: str, actor: str, source_ip: str) -> None:
    row = await AppUser.objects().where(AppUser.username == username).first()
    if row is None:
        raise UserError(Message("There is no user {name}.", name=username))
    if username == actor:
        raise UserError(Message("You cannot delete your own account."))
    if row.role == Role.admin.name and await _last_admin(row.id):
        raise UserError(Message("The last Admin cannot be deleted."))
    async with AppUser._meta.db.transaction():
        await AppUser.delete().where(AppUser.id == row.id)
        await audit.record(actor, "user.delete", username, source_ip, before={"role": row.role})


async def set_language(user_id: int, language: str | None) -> None:
    await AppUser.update({AppUser.language: language}).where(AppUser.id == user_id)


async def _last_admin(user_id: int) -> bool:
    others = await AppUser.count().where(
        (AppUser.role == Role.admin.name) & (AppUser.id != user_id)
    )
    return others == 0
