"""The second factor through the real app on real PostgreSQL: TOTP enrolment and login, replay and
guessing refused, recovery codes, the per-role policy, the Admin's reset and the audit trail."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pyotp

from app.auth import users
from app.auth.roles import Role
from app.db.tables import AuditLog, RecoveryCode, SecondFactor, UserSession
from tests.conftest import FIRST_ADMIN_PASSWORD, csrf, http_client, login, make_user

USER = "operator-user"


def _secret(page: str) -> str:
    match = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page)
    assert match, page
    return match.group(1)


def _codes(page: str) -> list[str]:
    codes = re.findall(r"<li><code>([A-Z0-9]{5}-[A-Z0-9]{5})</code></li>", page)
    assert len(codes) == 10, page
    return codes


async def _post(client: Any, path: str, data: dict[str, str] | None = None) -> Any:
    return await client.post(path, data=data or {}, headers=csrf(client), follow_redirects=False)


async def _enrol_totp(client: Any) -> tuple[str, list[str]]:
    """Enrol an authenticator app on a logged-in client: (its secret, the recovery codes)."""
    secret, codes, _ = await _enrol_totp_code(client)
    return secret, codes


async def _enrol_totp_code(client: Any) -> tuple[str, list[str], str]:
    """_enrol_totp, and the code that confirmed the enrolment (a code computed again later may
    be of the next time step on a slow machine)."""
    page = await _post(client, "/mfa/totp/new")
    assert page.status_code == 200, page.text
    assert "<svg" in page.text  # the QR code, inline
    secret = _secret(page.text)
    code = pyotp.TOTP(secret).now()
    done = await _post(client, "/mfa/totp", {"code": code, "name": "phone"})
    assert done.status_code == 200, done.text
    return secret, _codes(done.text), code


def _next_code(secret: str) -> str:
    """The code of the next time step: the enrolment spent the current one."""
    return pyotp.TOTP(secret).at(time.time() + 30)


async def _audit(action: str) -> list[dict[str, Any]]:
    rows = await AuditLog.select().where(AuditLog.action == action).order_by(AuditLog.id)
    for row in rows:
        for column in ("before", "after"):
            row[column] = json.loads(row[column]) if row[column] else None
    return rows


async def test_a_user_enrols_an_authenticator_app_and_logs_in_with_its_code(login_as, app):
    client = await login_as("operator")
    secret, _ = await _enrol_totp(client)
    row = await SecondFactor.objects().where(SecondFactor.kind == "totp").first()
    assert row.name == "phone"
    assert secret not in row.totp_secret_enc  # encrypted at rest with the node's key
    assert app.state.box.decrypt(row.totp_secret_enc) == secret
    await _post(client, "/logout")

    response = await login(client, USER)
    assert response.headers["location"] == "/mfa/verify"
    verify = await client.get("/mfa/verify")
    assert 'id="totp-verify"' in verify.text
    assert 'id="key-verify"' not in verify.text  # no security key enrolled
    answer = await _post(client, "/mfa/verify/totp", {"code": _next_code(secret)})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    assert (await client.get("/domains")).status_code == 200
    [enrol] = await _audit("mfa.enrol")
    assert (enrol["actor"], enrol["after"]) == (USER, {"kind": "totp", "name": "phone"})
    [passed] = await _audit("mfa.verify")
    assert (passed["outcome"], passed["after"]) == ("ok", {"method": "totp"})


async def test_a_wrong_code_and_a_replayed_code_are_refused(login_as):
    client = await login_as("operator")
    secret, _, enrolled_with = await _enrol_totp_code(client)
    # The code that confirmed the enrolment is spent already.
    await _post(client, "/logout")
    await login(client, USER)
    replay = await _post(client, "/mfa/verify/totp", {"code": enrolled_with})
    assert replay.status_code == 422
    assert "used already" in replay.text
    wrong_code = f"{(int(_next_code(secret)) + 1) % 1_000_000:06d}"
    wrong = await _post(client, "/mfa/verify/totp", {"code": wrong_code})
    assert wrong.status_code == 422
    assert "Wrong code." in wrong.text
    assert (await client.get("/", follow_redirects=False)).headers["location"] == "/mfa/verify"

    good = _next_code(secret)
    assert (await _post(client, "/mfa/verify/totp", {"code": good})).status_code == 303
    await _post(client, "/logout")
    await login(client, USER)
    again = await _post(client, "/mfa/verify/totp", {"code": good})
    assert again.status_code == 422
    assert "used already" in again.text
    failed = [r for r in await _audit("mfa.verify") if r["outcome"] == "failed"]
    reasons = [r["after"]["reason"] for r in failed]
    assert reasons == ["code used before", "wrong code", "code used before"]


async def test_a_half_logged_in_session_reaches_only_the_second_factor_pages(login_as):
    client = await login_as("operator")
    await _enrol_totp(client)
    codes_before = await RecoveryCode.count()
    await _post(client, "/logout")
    await login(client, USER)

    for path in ("/", "/domains", "/queue", "/mfa", "/password", "/audit"):
        response = await client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/mfa/verify", path
    # Adding a factor or new recovery codes would skip the check: both are refused.
    for path in ("/mfa/totp/new", "/mfa/recovery", "/mfa/keys/options", "/language", "/domains"):
        response = await _post(client, path, {"name": "example.org", "language": "de"})
        assert response.status_code == 303, path
        assert response.headers["location"] == "/mfa/verify", path
    htmx = await client.get("/", headers={"hx-request": "true"}, follow_redirects=False)
    assert htmx.headers["hx-redirect"] == "/mfa/verify"
    assert await RecoveryCode.count() == codes_before
    assert await SecondFactor.count() == 1
    verify = await client.get("/mfa/verify")
    assert verify.status_code == 200
    assert 'href="/domains"' not in verify.text  # no navigation while half logged in
    assert (await _post(client, "/logout")).headers["location"] == "/login"
    assert await UserSession.count() == 0


async def test_a_recovery_code_works_once(login_as):
    client = await login_as("operator")
    _, codes = await _enrol_totp(client)
    assert await RecoveryCode.count() == 10
    stored = await RecoveryCode.select(RecoveryCode.salt, RecoveryCode.code_hash)
    assert not any(code.replace("-", "") in str(stored) for code in codes)
    await _post(client, "/logout")

    await login(client, USER)
    first = await _post(client, "/mfa/verify/recovery", {"code": codes[3].lower()})
    assert first.status_code == 303
    assert first.headers["location"] == "/mfa"
    assert "Codes left: 9" in (await client.get("/mfa")).text
    await _post(client, "/logout")

    await login(client, USER)
    again = await _post(client, "/mfa/verify/recovery", {"code": codes[3]})
    assert again.status_code == 422
    assert "wrong or was used already" in again.text
    other = await _post(client, "/mfa/verify/recovery", {"code": codes[4].replace("-", " ")})
    assert other.status_code == 303
    used = await _audit("mfa.recovery_code_used")
    assert [r["after"] for r in used] == [{"left": 9}, {"left": 8}]


async def test_guessing_is_throttled_across_logins_and_the_right_code_waits_too(login_as):
    client = await login_as("operator")
    secret, _ = await _enrol_totp(client)
    await _post(client, "/logout")
    await login(client, USER)
    wrong_code = f"{(int(_next_code(secret)) + 1) % 1_000_000:06d}"
    for _ in range(3):
        assert (await _post(client, "/mfa/verify/totp", {"code": wrong_code})).status_code == 422
    # A correct password again does not refill the budget.
    await _post(client, "/logout")
    await login(client, USER)
    for _ in range(2):
        assert (await _post(client, "/mfa/verify/totp", {"code": wrong_code})).status_code == 422
    refused = await _post(client, "/mfa/verify/totp", {"code": _next_code(secret)})
    assert refused.status_code == 422
    assert "Too many wrong codes: try again in 10 minutes." in refused.text
    assert (await client.get("/", follow_redirects=False)).headers["location"] == "/mfa/verify"
    denied = [r for r in await _audit("mfa.verify") if r["outcome"] == "denied"]
    assert [r["after"]["reason"] for r in denied] == ["throttled"]


async def test_the_role_policy_forces_enrolment_before_anything_else(login_as, app):
    admin = await login_as("admin")
    saved = await _post(admin, "/users/second-factor-policy", {"require_operator": "on"})
    assert saved.status_code == 303
    page = (await admin.get("/users")).text
    assert 'name="require_operator" checked' in page
    assert 'name="require_admin" >' in page
    [change] = await _audit("mfa.policy")
    assert change["actor"] == "admin-user"
    assert change["before"]["operator"] is False
    assert change["after"] == {"admin": False, "operator": True, "readonly": False}

    await make_user(USER, "operator")
    async with http_client(app) as client:
        response = await login(client, USER)
        assert response.headers["location"] == "/mfa"
        for path in ("/", "/domains", "/password"):
            blocked = await client.get(path, follow_redirects=False)
            assert blocked.headers["location"] == "/mfa", path
        page = await client.get("/mfa")
        assert 'id="enrol-required"' in page.text
        assert 'href="/domains"' not in page.text
        await _enrol_totp(client)
        assert (await client.get("/domains")).status_code == 200
        # The only factor of a role that requires one stays.
        [factor] = await SecondFactor.select(SecondFactor.id)
        removal = await _post(client, f"/mfa/factors/{factor['id']}/remove")
        assert removal.status_code == 422
        assert "Your role requires a second factor" in removal.text
        assert await SecondFactor.count() == 1

    # A read-only user's role requires nothing: straight in.
    reader = await login_as("readonly")
    assert (await reader.get("/", follow_redirects=False)).status_code == 200


async def test_a_promoted_user_signs_in_again_and_meets_the_new_roles_policy(login_as, app):
    admin = await login_as("admin")
    await _post(admin, "/users/second-factor-policy", {"require_operator": "on"})
    await make_user(USER, "readonly")
    async with http_client(app) as client:
        await login(client, USER)
        assert (await client.get("/", follow_redirects=False)).status_code == 200
        await users.set_role(USER, Role.operator, "admin-user", "")
        # The session of the read-only user, who needed no second factor, is over.
        response = await client.get("/", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login")
        response = await login(client, USER)
        assert response.headers["location"] == "/mfa"


async def test_an_admin_resets_a_users_factors_and_it_is_audited(login_as):
    operator = await login_as("operator")
    await _enrol_totp(operator)
    admin = await login_as("admin")
    listing = (await admin.get("/users")).text
    assert "/users/operator-user/second-factor/reset" in listing
    assert "/users/admin-user/second-factor/reset" not in listing

    # Only an Admin may reset.
    assert (await _post(operator, "/users/admin-user/second-factor/reset")).status_code == 403
    response = await _post(admin, f"/users/{USER}/second-factor/reset")
    assert response.status_code == 303
    assert await SecondFactor.count() == 0
    assert await RecoveryCode.count() == 0
    # The reset also ends the user's sessions: a stolen one does not outlive it.
    assert (await operator.get("/", follow_redirects=False)).headers["location"] == "/login"
    [reset] = await _audit("mfa.reset")
    assert (reset["actor"], reset["target"]) == ("admin-user", USER)
    assert reset["before"] == [{"kind": "totp", "name": "phone"}]

    mine = await _post(admin, "/users/admin-user/second-factor/reset")
    assert mine.status_code == 422
    assert "Change your own factors" in mine.text
    response = await login(operator, USER)
    assert response.headers["location"] == "/"


async def test_a_factor_is_removed_with_its_recovery_codes_and_audited(login_as):
    client = await login_as("operator")
    await _enrol_totp(client)
    [factor] = await SecondFactor.select(SecondFactor.id)
    assert (await _post(client, f"/mfa/factors/{factor['id']}/remove")).status_code == 303
    assert await SecondFactor.count() == 0
    assert await RecoveryCode.count() == 0
    [removed] = await _audit("mfa.remove")
    assert removed["before"] == {"kind": "totp", "name": "phone"}
    await _post(client, "/logout")
    assert (await login(client, USER)).headers["location"] == "/"


async def test_security_keys_need_a_host_name_not_an_ip_address(app):
    await make_user(USER, "operator")
    async with http_client(app) as client:
        client.base_url = "https://127.0.0.1"
        await login(client, USER)
        page = await client.get("/mfa")
        assert "Security keys need the GUI opened by a host name" in page.text
        assert 'id="key-register"' not in page.text
        options = await _post(client, "/mfa/keys/options")
        assert options.status_code == 422
        assert "host name" in options.json()["detail"]


async def test_the_second_factor_pages_speak_german(login_as):
    client = await login_as("operator")
    page = await client.get("/mfa", headers={"accept-language": "de"})
    assert "Authenticator-App hinzufügen" in page.text
    assert "Sicherheitsschlüssel hinzufügen" in page.text


async def test_the_second_factor_comes_before_a_forced_password_change(login_as, app):
    await _post(await login_as("admin"), "/users/second-factor-policy", {"require_admin": "on"})
    async with http_client(app) as client:
        # The first admin must change the one-time password, and the policy requires a factor: enrol
        # first, then the password change, with no page in between.
        assert (await login(client, "admin", FIRST_ADMIN_PASSWORD)).headers["location"] == "/mfa"
        assert (await client.get("/password", follow_redirects=False)).headers["location"] == (
            "/mfa"
        )
        secret, _ = await _enrol_totp(client)
        assert (await client.get("/", follow_redirects=False)).headers["location"] == "/password"
        await _post(client, "/logout")

        assert (await login(client, "admin", FIRST_ADMIN_PASSWORD)).headers[
            "location"
        ] == "/mfa/verify"
        assert (await client.get("/password", follow_redirects=False)).headers["location"] == (
            "/mfa/verify"
        )
        await _post(client, "/mfa/verify/totp", {"code": _next_code(secret)})
        assert (await client.get("/", follow_redirects=False)).headers["location"] == "/password"
        assert (await client.get("/password")).status_code == 200
