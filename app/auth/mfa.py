"""The second factor: enrolment, the step after the password, recovery codes, the per-role
policy, an Admin's reset, and the guessing throttle; every step audited."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from app import audit
from app.auth import securitykeys, sessions, totp
from app.auth.refusal import Refusal
from app.auth.roles import Role
from app.auth.securitykeys import RelyingParty
from app.auth.sessions import SessionUser
from app.crypto import SecretBox
from app.db.tables import (
    AppUser,
    RecoveryCode,
    SecondFactor,
    SecondFactorPolicy,
    SecondFactorThrottle,
    SessionSecondFactor,
    UserSession,
)

VERIFY = "verify"  # the user has a factor: it must be passed
ENROL = "enrol"  # the role requires a factor and the user has none: enrol one first
TOTP = "totp"
WEBAUTHN = "webauthn"
ISSUER = "mailrelay"
RECOVERY_CODES = 10
# Base32 without 0/O and 1/I/L: ten characters hold 50 random bits, read aloud without doubt.
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CHALLENGE_LIFETIME = dt.timedelta(minutes=5)
# Guessable attempts (TOTP codes, recovery codes) per user: a burst of 5, then one per 10 minutes.
# A correct password does not refill it, so guessing the 6 digits stays at most 144 tries a day.
ATTEMPT_COST = dt.timedelta(minutes=10)
ATTEMPT_BURST = 5
NAME_MAX = 64


class MfaError(Refusal):
    """The second-factor step was refused; the message says why."""


class Throttled(MfaError):
    pass


class SecondFactorPending(Exception):
    """The session passed the password; the second factor (or its enrolment) comes first."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


@dataclass(frozen=True)
class Factor:
    id: int
    kind: str
    name: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- The session's second-factor state ---------------------------------------------------------

_STATE_COLUMNS = frozenset(
    {"stage", "challenge", "challenge_for", "challenge_at", "totp_pending_enc"}
)


async def _set_state(session_id: int, **values: Any) -> None:
    assert set(values) <= _STATE_COLUMNS, values  # column names come from this module only
    names = ", ".join(values)
    marks = ", ".join("{}" for _ in values)
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in values)
    await SessionSecondFactor.raw(
        f"INSERT INTO session_second_factor (session, {names}) VALUES ({{}}, {marks}) "  # noqa: S608
        f"ON CONFLICT (session) DO UPDATE SET {updates}",
        session_id,
        *values.values(),
    )


async def start_login(token: str) -> str | None:
    """Right after a correct password: mark the new session as waiting for the second factor
    when the user has one (VERIFY) or the role requires one (ENROL); return that stage."""
    row = (
        await UserSession.select(UserSession.id, UserSession.user.id, UserSession.user.role)
        .where(UserSession.token_hash == sessions.token_hash(token))
        .first()
    )
    if row is None:
        return None
    if await SecondFactor.exists().where(SecondFactor.user == row["user.id"]):
        stage: str | None = VERIFY
    elif await required_for(Role.parse(row["user.role"])):
        stage = ENROL
    else:
        return None
    await _set_state(row["id"], stage=stage)
    return stage


async def _passed(user: SessionUser, method: str, source_ip: str, **detail: Any) -> None:
    await SecondFactorThrottle.delete().where(SecondFactorThrottle.user == user.id)
    await SessionSecondFactor.update({SessionSecondFactor.stage: None}).where(
        SessionSecondFactor.session == user.session_id
    )
    await audit.record(
        user.username, "mfa.verify", user.username, source_ip, after={"method": method, **detail}
    )


async def _failed(user: SessionUser, method: str, source_ip: str, reason: str) -> None:
    await audit.record(
        user.username,
        "mfa.verify",
        user.username,
        source_ip,
        "failed",
        after={"method": method, "reason": reason},
    )


# --- Throttle ----------------------------------------------------------------------------------


async def _charge_attempt(user: SessionUser, method: str, source_ip: str) -> None:
    """Take one guessable attempt from the user's budget before checking it (so that parallel
    guesses count too), or refuse when the budget is spent. A refused try costs nothing."""
    now = _now()
    granted = await SecondFactorThrottle.raw(
        'INSERT INTO second_factor_throttle ("user", next_free_at) VALUES ({}, {}) '
        'ON CONFLICT ("user") DO UPDATE SET '
        "next_free_at = GREATEST(second_factor_throttle.next_free_at, {}) + {} "
        "WHERE GREATEST(second_factor_throttle.next_free_at, {}) + {} <= {} RETURNING id",
        user.id,
        now + ATTEMPT_COST,
        now,
        ATTEMPT_COST,
        now,
        ATTEMPT_COST,
        now + ATTEMPT_BURST * ATTEMPT_COST,
    )
    if granted:
        return
    row = (
        await SecondFactorThrottle.select(SecondFactorThrottle.next_free_at)
        .where(SecondFactorThrottle.user == user.id)
        .first()
    )
    free_at = row["next_free_at"] - (ATTEMPT_BURST - 1) * ATTEMPT_COST if row else now
    minutes = max(1, -(-int((free_at - now).total_seconds()) // 60))
    await audit.record(
        user.username,
        "mfa.verify",
        user.username,
        source_ip,
        "denied",
        after={"method": method, "reason": "throttled"},
    )
    raise Throttled("Too many wrong codes: try again in %d minutes.", minutes)


# --- Factors -----------------------------------------------------------------------------------


async def factors(user_id: int) -> list[Factor]:
    rows = (
        await SecondFactor.select(
            SecondFactor.id,
            SecondFactor.kind,
            SecondFactor.name,
            SecondFactor.created_at,
            SecondFactor.last_used_at,
        )
        .where(SecondFactor.user == user_id)
        .order_by(SecondFactor.id)
    )
    return [Factor(**row) for row in rows]


async def factor_summary() -> dict[str, dict[str, int]]:
    """Per username: how many factors of each kind (for the Admin's user list)."""
    rows = await SecondFactor.raw(
        "SELECT u.username, f.kind, count(*) AS n FROM second_factors AS f "
        'JOIN app_users AS u ON u.id = f."user" GROUP BY 1, 2'
    )
    summary: dict[str, dict[str, int]] = {}
    for row in rows:
        summary.setdefault(row["username"], {})[row["kind"]] = row["n"]
    return summary


def _name(value: str, default: str) -> str:
    name = " ".join(value.split()) or default
    if len(name) > NAME_MAX:
        raise MfaError("A name has at most %d characters.", NAME_MAX)
    return name


async def _enrolled(user: SessionUser, kind: str, name: str, source_ip: str) -> list[str] | None:
    """After a factor was stored: audit it, let an enrolling session in, and hand out the first
    recovery codes when this is the user's first factor."""
    await audit.record(
        user.username, "mfa.enrol", user.username, source_ip, after={"kind": kind, "name": name}
    )
    await SessionSecondFactor.update({SessionSecondFactor.stage: None}).where(
        (SessionSecondFactor.session == user.session_id) & (SessionSecondFactor.stage == ENROL)
    )
    if await SecondFactor.count().where(SecondFactor.user == user.id) == 1:
        return await new_recovery_codes(user, source_ip)
    return None


async def begin_totp(user: SessionUser, box: SecretBox) -> str:
    """A new secret for this session's enrolment, kept encrypted until a code confirms it."""
    if await SecondFactor.exists().where(
        (SecondFactor.user == user.id) & (SecondFactor.kind == TOTP)
    ):
        raise MfaError("You have an authenticator app already: remove it first.")
    secret = totp.new_secret()
    await _set_state(user.session_id, totp_pending_enc=box.encrypt(secret))
    return secret


async def pending_totp(user: SessionUser, box: SecretBox) -> str | None:
    row = (
        await SessionSecondFactor.select(SessionSecondFactor.totp_pending_enc)
        .where(SessionSecondFactor.session == user.session_id)
        .first()
    )
    return box.decrypt(row["totp_pending_enc"]) if row and row["totp_pending_enc"] else None


def totp_qr(secret: str, username: str, node_id: str) -> str:
    return totp.qr_svg(totp.provisioning_uri(secret, username, f"{ISSUER} {node_id}"))


async def confirm_totp(
    user: SessionUser, box: SecretBox, code: str, name: str, source_ip: str
) -> list[str] | None:
    """Store the pending secret once a code from the app matches it; the new recovery codes
    when this is the first factor."""
    name = _name(name, "Authenticator app")
    secret = await pending_totp(user, box)
    if secret is None:
        raise MfaError("Start the enrolment again: no new secret is waiting.")
    step = totp.matching_step(secret, code, time.time())
    if step is None:
        raise MfaError("The code does not match: check the time on your phone and try again.")
    async with SecondFactor._meta.db.transaction():
        if await SecondFactor.exists().where(
            (SecondFactor.user == user.id) & (SecondFactor.kind == TOTP)
        ):
            raise MfaError("You have an authenticator app already: remove it first.")
        await SecondFactor.insert(
            SecondFactor(
                user=user.id,
                kind=TOTP,
                name=name,
                created_at=_now(),
                totp_secret_enc=box.encrypt(secret),
                # The confirming code is spent: it cannot log anyone in.
                totp_last_step=step,
            )
        )
        await _set_state(user.session_id, totp_pending_enc=None)
        return await _enrolled(user, TOTP, name, source_ip)


async def verify_totp(user: SessionUser, box: SecretBox, code: str, source_ip: str) -> None:
    await _charge_attempt(user, TOTP, source_ip)
    row = (
        await SecondFactor.select(SecondFactor.id, SecondFactor.totp_secret_enc)
        .where((SecondFactor.user == user.id) & (SecondFactor.kind == TOTP))
        .first()
    )
    if row is None:
        await _failed(user, TOTP, source_ip, "no authenticator app")
        raise MfaError("You have no authenticator app: use a security key or a recovery code.")
    step = totp.matching_step(box.decrypt(row["totp_secret_enc"]), code, time.time())
    if step is None:
        await _failed(user, TOTP, source_ip, "wrong code")
        raise MfaError("Wrong code.")
    # Only a later time step than the last accepted one: a code works once, even in parallel.
    accepted = (
        await SecondFactor.update(
            {SecondFactor.totp_last_step: step, SecondFactor.last_used_at: _now()}
        )
        .where(
            (SecondFactor.id == row["id"])
            & (SecondFactor.totp_last_step.is_null() | (SecondFactor.totp_last_step < step))
        )
        .returning(SecondFactor.id)
    )
    if not accepted:
        await _failed(user, TOTP, source_ip, "code used before")
        raise MfaError("This code was used already: wait for the next one.")
    await _passed(user, TOTP, source_ip)


async def _take_challenge(user: SessionUser, purpose: str) -> str:
    """The session's open challenge for `purpose`, cleared as it is read: each works once."""
    rows = await SessionSecondFactor.raw(
        "WITH open AS (SELECT id, challenge, challenge_at FROM session_second_factor "
        "WHERE session = {} AND challenge_for = {} AND challenge IS NOT NULL FOR UPDATE) "
        "UPDATE session_second_factor AS s SET challenge = NULL, challenge_for = NULL, "
        "challenge_at = NULL FROM open WHERE s.id = open.id "
        "RETURNING open.challenge, open.challenge_at",
        user.session_id,
        purpose,
    )
    if not rows or rows[0]["challenge_at"] < _now() - CHALLENGE_LIFETIME:
        raise MfaError("The security key request expired: try again.")
    return str(rows[0]["challenge"])


async def _key_ids(user_id: int) -> list[str]:
    rows = await SecondFactor.select(SecondFactor.credential_id).where(
        (SecondFactor.user == user_id) & (SecondFactor.kind == WEBAUTHN)
    )
    return [row["credential_id"] for row in rows]


async def key_registration_options(user: SessionUser, rp: RelyingParty) -> str:
    # The user handle is the account's number: stable, and no name in it.
    options, challenge = securitykeys.registration_options(
        rp, str(user.id).encode(), user.username, await _key_ids(user.id)
    )
    await _set_state(
        user.session_id, challenge=challenge, challenge_for="register", challenge_at=_now()
    )
    return options


async def register_key(
    user: SessionUser, rp: RelyingParty, credential: str, name: str, source_ip: str
) -> list[str] | None:
    name = _name(name, "Security key")
    if not credential:
        raise MfaError("The browser sent no security key answer (security keys need JavaScript).")
    challenge = await _take_challenge(user, "register")
    try:
        key = securitykeys.verify_registration(rp, credential, challenge)
    except securitykeys.SecurityKeyError as exc:
        await audit.record(
            user.username, "mfa.enrol", user.username, source_ip, "failed", after={"kind": WEBAUTHN}
        )
        raise MfaError(exc.message, *exc.params) from exc
    async with SecondFactor._meta.db.transaction():
        if await SecondFactor.exists().where(SecondFactor.credential_id == key.credential_id):
            raise MfaError("This security key is registered already.")
        await SecondFactor.insert(
            SecondFactor(
                user=user.id,
                kind=WEBAUTHN,
                name=name,
                created_at=_now(),
                credential_id=key.credential_id,
                public_key=key.public_key,
                sign_count=key.sign_count,
            )
        )
        return await _enrolled(user, WEBAUTHN, name, source_ip)


async def key_authentication_options(user: SessionUser, rp: RelyingParty) -> str:
    ids = await _key_ids(user.id)
    if not ids:
        raise MfaError("You have no security key: use your authenticator app or a recovery code.")
    options, challenge = securitykeys.authentication_options(rp, ids)
    await _set_state(
        user.session_id, challenge=challenge, challenge_for="authenticate", challenge_at=_now()
    )
    return options


async def verify_key(user: SessionUser, rp: RelyingParty, credential: str, source_ip: str) -> None:
    if not credential:
        raise MfaError("The browser sent no security key answer (security keys need JavaScript).")
    challenge = await _take_challenge(user, "authenticate")
    try:
        credential_id = securitykeys.credential_id_of(credential)
    except securitykeys.SecurityKeyError as exc:
        raise MfaError(exc.message, *exc.params) from exc
    row = (
        await SecondFactor.select(SecondFactor.id, SecondFactor.public_key, SecondFactor.sign_count)
        .where(
            (SecondFactor.user == user.id)
            & (SecondFactor.kind == WEBAUTHN)
            & (SecondFactor.credential_id == credential_id)
        )
        .first()
    )
    if row is None:
        await _failed(user, WEBAUTHN, source_ip, "unknown key")
        raise MfaError("This security key is not registered for your account.")
    try:
        count = securitykeys.verify_authentication(
            rp, credential, challenge, row["public_key"], row["sign_count"]
        )
    except securitykeys.SecurityKeyError as exc:
        await _failed(user, WEBAUTHN, source_ip, str(exc))
        raise MfaError(exc.message, *exc.params) from exc
    # The counter only moves forward: a cloned key answering in parallel loses the race.
    moved = (
        await SecondFactor.update(
            {SecondFactor.sign_count: count, SecondFactor.last_used_at: _now()}
        )
        .where((SecondFactor.id == row["id"]) & (SecondFactor.sign_count == row["sign_count"]))
        .returning(SecondFactor.id)
    )
    if not moved:
        await _failed(user, WEBAUTHN, source_ip, "signature counter raced")
        raise MfaError("The security key was used twice at once: try again.")
    await _passed(user, WEBAUTHN, source_ip, key=row["id"])


async def remove_factor(user: SessionUser, factor_id: int, source_ip: str) -> None:
    row = (
        await SecondFactor.select(SecondFactor.kind, SecondFactor.name)
        .where((SecondFactor.id == factor_id) & (SecondFactor.user == user.id))
        .first()
    )
    if row is None:
        raise MfaError("There is no such factor.")
    async with SecondFactor._meta.db.transaction():
        left = await SecondFactor.count().where(
            (SecondFactor.user == user.id) & (SecondFactor.id != factor_id)
        )
        if left == 0 and await required_for(user.role):
            raise MfaError(
                "Your role requires a second factor: add another one before you remove this one."
            )
        await SecondFactor.delete().where(SecondFactor.id == factor_id)
        if left == 0:
            # Recovery codes stand in for a factor; with none left they would guard nothing.
            await RecoveryCode.delete().where(RecoveryCode.user == user.id)
        await audit.record(user.username, "mfa.remove", user.username, source_ip, before=row)


# --- Recovery codes ----------------------------------------------------------------------------


def _code_hash(salt: str, code: str) -> str:
    return hashlib.sha256(f"{salt}:{code}".encode()).hexdigest()


def _normalize_code(code: str) -> str:
    return "".join(c for c in code.upper() if c.isalnum())


async def new_recovery_codes(user: SessionUser, source_ip: str) -> list[str]:
    """Ten fresh single-use codes replacing any earlier ones; shown once, stored hashed."""
    if not await SecondFactor.exists().where(SecondFactor.user == user.id):
        raise MfaError("Add a second factor first: recovery codes stand in for one.")
    codes = [
        "".join(secrets.choice(_CODE_ALPHABET) for _ in range(10)) for _ in range(RECOVERY_CODES)
    ]
    now = _now()
    async with RecoveryCode._meta.db.transaction():
        await RecoveryCode.delete().where(RecoveryCode.user == user.id)
        rows = []
        for code in codes:
            salt = secrets.token_hex(16)
            rows.append(
                RecoveryCode(
                    user=user.id, salt=salt, code_hash=_code_hash(salt, code), created_at=now
                )
            )
        await RecoveryCode.insert(*rows)
        await audit.record(
            user.username,
            "mfa.recovery_codes",
            user.username,
            source_ip,
            after={"count": len(codes)},
        )
    return [f"{code[:5]}-{code[5:]}" for code in codes]


async def recovery_codes_left(user_id: int) -> int:
    return await RecoveryCode.count().where(
        (RecoveryCode.user == user_id) & RecoveryCode.used_at.is_null()
    )


async def verify_recovery_code(user: SessionUser, code: str, source_ip: str) -> int:
    """Log in with a recovery code, which is spent; the number of codes left."""
    await _charge_attempt(user, "recovery", source_ip)
    wanted = _normalize_code(code)
    rows = await RecoveryCode.select(
        RecoveryCode.id, RecoveryCode.salt, RecoveryCode.code_hash
    ).where((RecoveryCode.user == user.id) & RecoveryCode.used_at.is_null())
    match = next(
        (
            r["id"]
            for r in rows
            if hmac.compare_digest(_code_hash(r["salt"], wanted), r["code_hash"])
        ),
        None,
    )
    # Spent in one conditional statement: of two requests with the same code, one wins.
    spent = match is not None and bool(
        await RecoveryCode.update({RecoveryCode.used_at: _now()})
        .where((RecoveryCode.id == match) & RecoveryCode.used_at.is_null())
        .returning(RecoveryCode.id)
    )
    if not spent:
        await _failed(user, "recovery", source_ip, "wrong or used code")
        raise MfaError("This recovery code is wrong or was used already.")
    left = await recovery_codes_left(user.id)
    await audit.record(
        user.username, "mfa.recovery_code_used", user.username, source_ip, after={"left": left}
    )
    await _passed(user, "recovery", source_ip)
    return left


# --- Policy and the Admin's reset --------------------------------------------------------------


async def required_for(role: Role) -> bool:
    row = (
        await SecondFactorPolicy.select(SecondFactorPolicy.required)
        .where(SecondFactorPolicy.role == role.name)
        .first()
    )
    return bool(row and row["required"])


async def policy() -> dict[Role, bool]:
    rows = await SecondFactorPolicy.select(SecondFactorPolicy.role, SecondFactorPolicy.required)
    required = {row["role"] for row in rows if row["required"]}
    return {role: role.name in required for role in Role}


async def set_policy(required: set[Role], actor: str, source_ip: str) -> None:
    """Which roles must have a second factor; applies from each user's next login."""
    before = await policy()
    after = {role: role in required for role in Role}
    if after == before:
        return
    now = _now()
    async with SecondFactorPolicy._meta.db.transaction():
        for role, value in after.items():
            await SecondFactorPolicy.raw(
                "INSERT INTO second_factor_policy (role, required, changed_by, changed_at) "
                "VALUES ({}, {}, {}, {}) ON CONFLICT (role) DO UPDATE SET "
                "required = EXCLUDED.required, changed_by = EXCLUDED.changed_by, "
                "changed_at = EXCLUDED.changed_at",
                role.name,
                value,
                actor,
                now,
            )
        await audit.record(
            actor,
            "mfa.policy",
            "",
            source_ip,
            before={r.name: v for r, v in before.items()},
            after={r.name: v for r, v in after.items()},
        )


async def reset(username: str, actor: str, source_ip: str) -> None:
    """An Admin removes another user's factors and recovery codes (a lost phone or key) and
    ends that user's sessions; the next login enrols anew where the role requires it."""
    row = await AppUser.select(AppUser.id).where(AppUser.username == username).first()
    if row is None:
        raise MfaError("There is no user %s.", username)
    if username == actor:
        raise MfaError("Change your own factors on the Second factor page.")
    async with SecondFactor._meta.db.transaction():
        removed = (
            await SecondFactor.delete()
            .where(SecondFactor.user == row["id"])
            .returning(SecondFactor.kind, SecondFactor.name)
        )
        await RecoveryCode.delete().where(RecoveryCode.user == row["id"])
        await SecondFactorThrottle.delete().where(SecondFactorThrottle.user == row["id"])
        await sessions.end_other_sessions(row["id"], keep_session_id=None)
        await audit.record(actor, "mfa.reset", username, source_ip, before=removed)
