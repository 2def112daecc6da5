"""Login throttling over the real login form and PostgreSQL: scores that drain, one answer for
every failure, per-network counting, and the bound on parallel argon2 runs."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time

import pytest

from app.auth import passwords, throttle, users
from app.db.tables import AppUser, AuditLog, LoginThrottle
from tests.conftest import PASSWORD, csrf, http_client, login, make_user

WRONG = "wrong-password-123"
FAILED = "Wrong username or password, or too many attempts"


@pytest.fixture
def quick_failures(monkeypatch):
    """Failed logins answered at once, for tests that count answers rather than time them."""
    monkeypatch.setattr(throttle, "FAILURE_ANSWER_SECONDS", 0.0)


async def _time_passes(seconds: float) -> None:
    """As if `seconds` went by for the throttle (its rows are all it remembers)."""
    await LoginThrottle.raw(
        "UPDATE login_throttle SET updated_at = updated_at - {}::interval",
        dt.timedelta(seconds=seconds),
    )


async def _reasons() -> list[str]:
    rows = (
        await AuditLog.select(AuditLog.after)
        .where((AuditLog.action == "login") & (AuditLog.outcome == "failed"))
        .order_by(AuditLog.id)
    )
    return [json.loads(row["after"])["reason"] for row in rows]


async def _timed_login(client, username: str, password: str):
    started = time.monotonic()
    response = await login(client, username, password)
    return response, time.monotonic() - started


@pytest.mark.usefixtures("quick_failures")
async def test_one_bad_attempt_every_window_does_not_keep_admin_locked(client):
    await make_user("boss", "admin")
    # The attack: a wrong guess every 15 minutes, for longer than any limit; the real
    # admin comes 5 minutes after the last one.
    for _ in range(throttle.ACCOUNT_LIMIT * 2):
        await _time_passes(15 * 60)
        response = await login(client, "boss", WRONG)
        assert response.status_code == 422
    await _time_passes(5 * 60)
    response = await login(client, "boss")
    assert response.status_code == 303
    assert set(await _reasons()) == {"wrong password"}  # every guess was checked, none refused


@pytest.mark.usefixtures("quick_failures")
async def test_a_full_score_refuses_even_the_right_password_until_it_drains(client):
    await make_user("op", "operator")
    for _ in range(throttle.ACCOUNT_LIMIT):
        await login(client, "op", WRONG)
    assert (await login(client, "op")).status_code == 422
    await _time_passes(throttle.DRAIN_SECONDS)  # one counted attempt drained
    assert (await login(client, "op")).status_code == 303


@pytest.mark.usefixtures("quick_failures")
async def test_refused_attempts_do_not_make_the_wait_longer(app, client):
    await make_user("op", "operator")
    for _ in range(throttle.ACCOUNT_LIMIT):
        await login(client, "op", WRONG)
    # A flood of refused attempts from many places adds nothing to the score...
    clients = [http_client(app, f"198.18.2.{i}") for i in range(1, 21)]
    try:
        answers = await asyncio.gather(*(login(c, "op", WRONG) for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert {a.status_code for a in answers} == {422}
    # ...so the account is free again as soon as the guesses before it have drained.
    await _time_passes(throttle.DRAIN_SECONDS * throttle.ACCOUNT_LIMIT)
    assert (await login(client, "op")).status_code == 303


async def test_a_throttled_login_answers_exactly_like_a_wrong_password(client):
    await make_user("op", "operator")
    for _ in range(throttle.ACCOUNT_LIMIT - 1):
        await login(client, "op", WRONG)
    wrong, wrong_took = await _timed_login(client, "op", WRONG)
    # The right password now: refused unchecked, and nothing in the answer may say so.
    throttled, throttled_took = await _timed_login(client, "op", PASSWORD)
    assert throttled.status_code == wrong.status_code == 422
    assert FAILED in throttled.text
    assert throttled.text == wrong.text
    assert throttled.headers.get("set-cookie") == wrong.headers.get("set-cookie")
    assert (await _reasons())[-2:] == ["wrong password", "throttled"]  # only the audit tells
    # No argon2 run for the refused one; the answer still comes when a checked one would.
    for took in (wrong_took, throttled_took):
        assert throttle.FAILURE_ANSWER_SECONDS <= took < throttle.FAILURE_ANSWER_SECONDS + 0.4


async def test_an_unknown_user_answers_exactly_like_a_wrong_password(client):
    await make_user("op", "operator")
    wrong, wrong_took = await _timed_login(client, "op", WRONG)
    unknown, unknown_took = await _timed_login(client, "xo", WRONG)  # same length as "op"
    assert await _reasons() == ["wrong password", "unknown user"]
    assert unknown.status_code == wrong.status_code == 422
    assert unknown.text.replace('value="xo"', 'value="op"') == wrong.text
    assert abs(unknown_took - wrong_took) < 0.2


@pytest.mark.usefixtures("quick_failures")
async def test_an_unknown_user_is_throttled_like_a_real_one(app):
    await make_user("op", "operator")
    for n, name in enumerate(("op", "nobody"), start=1):
        async with http_client(app, f"198.18.3.{n}") as c:
            for _ in range(throttle.ACCOUNT_LIMIT + 1):
                await login(c, name, WRONG)
    limit = throttle.ACCOUNT_LIMIT
    assert await _reasons() == (
        ["wrong password"] * limit + ["throttled"] + ["unknown user"] * limit + ["throttled"]
    )


@pytest.mark.usefixtures("quick_failures")
async def test_an_ipv6_attacker_rotating_addresses_in_one_64_is_throttled(app):
    await make_user("op", "operator")
    # Each guess from a new address of the same /64, and for a new name each time.
    for i in range(1, throttle.NETWORK_LIMIT + 1):
        async with http_client(app, f"2001:db8:0:1::{i:x}") as guesser:
            assert (await login(guesser, f"guess{i}", WRONG)).status_code == 422
    async with http_client(app, "2001:db8:0:1:ffff:ffff:ffff:ffff") as same_64:
        response = await login(same_64, "op")
        assert response.status_code == 422
        assert FAILED in response.text
    async with http_client(app, "2001:db8:0:2::1") as next_64:
        assert (await login(next_64, "op")).status_code == 303
    assert (await _reasons())[-1] == "throttled"


@pytest.mark.usefixtures("quick_failures")
async def test_an_ipv4_address_is_throttled_alone(app, client):
    await make_user("op", "operator")
    for i in range(throttle.NETWORK_LIMIT):
        await login(client, f"guess{i}", WRONG)  # client: 198.18.0.30
    assert (await login(client, "op")).status_code == 422
    async with http_client(app, "198.18.0.31") as neighbour:
        assert (await login(neighbour, "op")).status_code == 303


async def test_parallel_guesses_cannot_exceed_the_limit(app):
    await make_user("op", "operator")
    guesses = throttle.ACCOUNT_LIMIT * 4
    # One address each, so that only the account's score can stop them.
    clients = [http_client(app, f"198.18.1.{i}") for i in range(1, guesses + 1)]
    try:
        for c in clients:
            await c.get("/login")
        answers = await asyncio.gather(
            *(
                c.post(
                    "/login",
                    data={"username": "op", "password": WRONG},
                    headers=csrf(c),
                    follow_redirects=False,
                )
                for c in clients
            )
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert {a.status_code for a in answers} == {422}
    reasons = await _reasons()
    assert len(reasons) == guesses  # every attempt audited
    assert 1 <= reasons.count("wrong password") <= throttle.ACCOUNT_LIMIT
    assert reasons.count("throttled") >= guesses - throttle.ACCOUNT_LIMIT
    assert set(reasons) <= {"wrong password", "throttled", "busy"}


@pytest.mark.usefixtures("quick_failures")
async def test_a_success_does_not_count_against_the_limit(client):
    await make_user("op", "operator")
    for _ in range(throttle.ACCOUNT_LIMIT - 1):
        await login(client, "op", WRONG)
    assert (await login(client, "op")).status_code == 303
    await login(client, "op", WRONG)  # the limit's last attempt: still checked
    assert (await _reasons())[-1] == "wrong password"
    user = await AppUser.objects().where(AppUser.username == "op").first()
    assert user.last_login_at is not None


@pytest.mark.usefixtures("quick_failures")
async def test_an_admin_password_reset_frees_a_throttled_account(app, login_as, client):
    admin = await login_as("admin")
    await make_user("op", "operator")
    for _ in range(throttle.ACCOUNT_LIMIT):
        await login(client, "op", WRONG)
    page = await admin.get("/users")
    assert dt.datetime.now(dt.UTC).strftime("%Y-%m-%d") in page.text  # "Locked until" shown
    response = await admin.post(
        "/users/op/reset",
        data={"password": "a-fresh-password-1"},
        headers=csrf(admin),
        follow_redirects=False,
    )
    assert response.status_code == 303
    async with http_client(app, "198.18.0.99") as elsewhere:
        assert (await login(elsewhere, "op", "a-fresh-password-1")).status_code == 303


@pytest.mark.usefixtures("quick_failures")
async def test_drained_scores_are_deleted(client):
    await login(client, "nobody", WRONG)
    assert await LoginThrottle.count() == 2  # the name and the network
    await _time_passes(throttle.DRAIN_SECONDS)
    await login(client, "someone", WRONG)
    keys = {row["key"] for row in await LoginThrottle.select(LoginThrottle.key)}
    assert keys == {"user:someone", "net:198.18.0.30"}


async def test_argon2_runs_beside_the_event_loop_and_a_burst_is_bounded():
    hashed = passwords.hash_password("a-long-enough-password")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        results = await asyncio.gather(
            *(passwords.verify_password_bounded(hashed, "wrong") for _ in range(20))
        )
    finally:
        beat.cancel()
    took = time.monotonic() - started
    # The loop kept running while argon2 worked (on the loop, 20 runs would starve it).
    assert ticks >= took / 0.01 * 0.3
    assert results.count(False) >= passwords.VERIFY_SLOTS  # some were checked (and wrong)
    assert None in results  # the rest got no slot and were answered, not queued
    assert took < passwords.VERIFY_WAIT_SECONDS + 2.0
    assert await passwords.verify_password_bounded(hashed, "a-long-enough-password") is True


async def test_the_password_form_is_no_unthrottled_guess_at_the_current_password(login_as):
    """A session (a stolen cookie, an unattended browser) guessing the account's password on
    the password form is counted like logins are: after ACCOUNT_LIMIT wrong guesses even the
    right one is refused, and every failure is audited."""
    client = await login_as("operator")

    async def change(current: str):
        new = "an-entirely-new-secret"
        return await client.post(
            "/password",
            data={"current_password": current, "new_password": new, "new_password_again": new},
            headers=csrf(client),
            follow_redirects=False,
        )

    for _ in range(throttle.ACCOUNT_LIMIT):
        answer = await change(WRONG)
        assert answer.status_code == 422 and "too many attempts" in answer.text
    refused = await change(PASSWORD)
    assert refused.status_code == 422 and "too many attempts" in refused.text
    rows = (
        await AuditLog.select(AuditLog.after)
        .where((AuditLog.action == "password.change") & (AuditLog.outcome == "failed"))
        .order_by(AuditLog.id)
    )
    reasons = [json.loads(row["after"])["reason"] for row in rows]
    assert reasons == ["wrong password"] * throttle.ACCOUNT_LIMIT + ["throttled"]
    await _time_passes(throttle.DRAIN_SECONDS * (throttle.ACCOUNT_LIMIT + 1))
    assert (await change(PASSWORD)).status_code == 303


async def test_an_oversized_form_is_refused_before_it_is_read(app, client):
    """Anyone may post the login form: a body of megabytes is refused, not parsed on the event
    loop that also serves the peer's API."""
    await client.get("/login")
    body = b"a=&" * (1024 * 1024 // 3)
    answer = await client.post(
        "/login",
        content=body,
        headers={**csrf(client), "content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 413


async def test_a_password_change_hashes_off_the_event_loop(login_as, monkeypatch):
    """argon2 takes a tenth of a second of CPU per run: on the event loop, a few password
    changes at once would stall every page and the peer's API."""
    client = await login_as("readonly")
    threads: list[str] = []
    for name in ("hash_password", "check_new_password"):
        real = getattr(users, name)

        def spy(*args: object, real=real) -> object:
            threads.append(threading.current_thread().name)
            return real(*args)

        monkeypatch.setattr(users, name, spy)
    new = "an-entirely-new-secret"
    answer = await client.post(
        "/password",
        data={"current_password": PASSWORD, "new_password": new, "new_password_again": new},
        headers=csrf(client),
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert len(threads) == 2 and threading.main_thread().name not in threads
