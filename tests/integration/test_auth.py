"""Login, the forced password change, sessions, CSRF and headers (real PostgreSQL).

Throttling is in test_login_throttle.py."""

from __future__ import annotations

import dataclasses
import datetime as dt

from app import audit
from app.auth.sessions import COOKIE_NAME
from app.db.tables import AppUser, AuditLog, UserSession
from tests.conftest import FIRST_ADMIN_PASSWORD, PASSWORD, csrf, http_client, login, make_user

NEW_PASSWORD = "a-much-better-secret"


async def test_the_first_admin_must_change_the_one_time_password_first(client):
    response = await login(client, "admin", FIRST_ADMIN_PASSWORD)
    assert response.status_code == 303
    assert response.headers["location"] == "/password"
    for path in ("/", "/domains", "/users", "/versions"):
        page = await client.get(path, follow_redirects=False)
        assert page.status_code == 303, path
        assert page.headers["location"] == "/password"


async def test_it_changes_the_password_and_then_lets_the_admin_in(client):
    await login(client, "admin", FIRST_ADMIN_PASSWORD)
    response = await client.post(
        "/password",
        data={
            "current_password": FIRST_ADMIN_PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_again": NEW_PASSWORD,
        },
        headers=csrf(client),
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert (await client.get("/domains")).status_code == 200
    row = await AppUser.objects().where(AppUser.username == "admin").first()
    assert row.must_change_password is False
    assert row.password_hash.startswith("$argon2id$")


async def test_it_enforces_the_password_rules(client):
    await login(client, "admin", FIRST_ADMIN_PASSWORD)
    for new, message in (
        ("short", "at least 12"),
        ("admin", "at least 12"),
        ("ADMIN", "at least 12"),
        ("Short123", "at least 12"),
    ):
        response = await client.post(
            "/password",
            data={
                "current_password": FIRST_ADMIN_PASSWORD,
                "new_password": new,
                "new_password_again": new,
            },
            headers=csrf(client),
        )
        assert response.status_code == 422
        assert message in response.text
    await make_user("longusername1", "readonly")
    other = await AppUser.objects().where(AppUser.username == "longusername1").first()
    assert other is not None


async def test_it_refuses_the_username_and_the_old_password_as_new_password(client):
    await make_user("operator-one", "operator")
    await login(client, "operator-one")
    for new, message in (("operator-one", "not be the username"), (PASSWORD, "differ")):
        response = await client.post(
            "/password",
            data={"current_password": PASSWORD, "new_password": new, "new_password_again": new},
            headers=csrf(client),
        )
        assert response.status_code == 422
        assert message in response.text


async def test_logout_ends_the_session_on_the_server(client):
    await make_user("op", "operator")
    await login(client, "op")
    cookie = client.cookies.get(COOKIE_NAME)
    assert (await client.get("/")).status_code == 200
    await client.post("/logout", headers=csrf(client), follow_redirects=False)
    assert await UserSession.count() == 0
    client.cookies.set(COOKIE_NAME, cookie)
    response = await client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")


async def test_a_password_change_ends_the_other_sessions(app, client):
    await make_user("op", "operator")
    async with http_client(app) as other:
        await login(other, "op")
        await login(client, "op")
        assert (await other.get("/")).status_code == 200
        response = await client.post(
            "/password",
            data={
                "current_password": PASSWORD,
                "new_password": NEW_PASSWORD,
                "new_password_again": NEW_PASSWORD,
            },
            headers=csrf(client),
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert (await client.get("/")).status_code == 200
        assert (await other.get("/", follow_redirects=False)).status_code == 303


async def test_an_idle_session_expires(client, settings):
    await make_user("op", "operator")
    await login(client, "op")
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=settings.session_idle_minutes + 1)
    await UserSession.update({UserSession.last_seen_at: stale}, force=True)
    response = await client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert await UserSession.count() == 0


async def test_the_session_cookie_is_secure_httponly_and_strict(client):
    await make_user("op", "operator")
    response = await login(client, "op")
    cookie = response.headers["set-cookie"].lower()
    assert "mailrelay_session=" in cookie
    assert "secure" in cookie
    assert "httponly" in cookie
    assert "samesite=strict" in cookie


async def test_a_post_without_csrf_token_is_refused(client):
    await make_user("op", "operator")
    await login(client, "op")
    response = await client.post("/domains", data={"name": "example.com"})
    assert response.status_code == 403
    response = await client.post(
        "/domains", data={"name": "example.com"}, headers={"x-csrftoken": "forged"}
    )
    assert response.status_code == 403
    response = await client.post("/domains", data={"name": "example.com"}, headers=csrf(client))
    assert response.status_code in (200, 303)


async def test_the_login_form_needs_the_csrf_token_too(client):
    await client.get("/login")
    response = await client.post(
        "/login", data={"username": "admin", "password": FIRST_ADMIN_PASSWORD}
    )
    assert response.status_code == 403


async def test_pages_carry_the_security_headers(client):
    response = await client.get("/login")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self' https://cdn.jsdelivr.net/npm/htmx.org@" in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["strict-transport-security"].startswith("max-age=")
    redirect = await client.get("/", follow_redirects=False)
    assert redirect.headers["x-frame-options"] == "DENY"


async def test_the_page_loads_htmx_with_subresource_integrity(client):
    from app.web.assets import HTMX_SRI

    page = (await client.get("/login")).text
    assert f'integrity="{HTMX_SRI}"' in page
    assert "<script>" not in page  # no inline scripts


async def test_login_does_not_redirect_to_another_site(client):
    await make_user("op", "operator")
    await client.get("/login")
    response = await client.post(
        "/login",
        data={"username": "op", "password": PASSWORD, "next": "//evil.example/"},
        headers=csrf(client),
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


async def test_a_session_ends_after_its_absolute_lifetime(client, settings):
    await make_user("op", "operator")
    await login(client, "op")
    # Busy all along (seen a moment ago), but logged in longer ago than the lifetime allows.
    born = dt.datetime.now(dt.UTC) - dt.timedelta(hours=settings.session_max_hours, minutes=1)
    await UserSession.update({UserSession.created_at: born}, force=True)
    response = await client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    assert await UserSession.count() == 0


async def test_a_session_younger_than_its_lifetime_goes_on(client, settings):
    await make_user("op", "operator")
    await login(client, "op")
    born = dt.datetime.now(dt.UTC) - dt.timedelta(hours=settings.session_max_hours, minutes=-1)
    await UserSession.update({UserSession.created_at: born}, force=True)
    assert (await client.get("/", follow_redirects=False)).status_code == 200


def _set_cookie(response, name):
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    return [part.strip().lower() for part in headers[0].split(";")]


async def test_the_session_cookie_has_the_host_prefix(client):
    await make_user("op", "operator")
    response = await login(client, "op")
    attributes = _set_cookie(response, "__Host-mailrelay_session")
    # What a browser requires of a __Host- cookie, or it drops it.
    assert "secure" in attributes
    assert "path=/" in attributes
    assert not any(a.startswith("domain=") for a in attributes)
    assert "httponly" in attributes and "samesite=strict" in attributes
    logout = await client.post("/logout", headers=csrf(client), follow_redirects=False)
    # The deletion must meet the same rules, or the browser ignores it and keeps the cookie.
    deletion = _set_cookie(logout, "__Host-mailrelay_session")
    assert "secure" in deletion and "path=/" in deletion and "max-age=0" in deletion


async def test_the_csrf_cookie_has_the_host_prefix(client):
    attributes = _set_cookie(await client.get("/login"), "__Host-csrftoken")
    assert "secure" in attributes
    assert "path=/" in attributes
    assert not any(a.startswith("domain=") for a in attributes)


async def test_post_to_a_path_containing_api_needs_a_csrf_token(login_as):
    admin = await login_as("admin")
    await make_user("api", "readonly")
    before = (await AppUser.objects().where(AppUser.username == "api").first()).password_hash
    response = await admin.post(
        "/users/api/reset", data={"password": NEW_PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 403
    after = (await AppUser.objects().where(AppUser.username == "api").first()).password_hash
    assert after == before
    # With the token the same request goes through: the refusal was the CSRF check's.
    response = await admin.post(
        "/users/api/reset",
        data={"password": NEW_PASSWORD},
        headers=csrf(admin),
        follow_redirects=False,
    )
    assert response.status_code == 303


async def test_a_csrf_refusal_is_audited(login_as):
    operator = await login_as("operator")
    response = await operator.post("/domains", data={"name": "example.com"})
    assert response.status_code == 403
    rows = await AuditLog.select().where(AuditLog.action == "csrf.refused")
    assert [(r["actor"], r["target"], r["source_ip"], r["outcome"]) for r in rows] == [
        ("operator-user", "POST /domains", "198.18.0.30", "denied")
    ]


async def test_a_csrf_refusal_of_the_login_form_is_audited(client):
    await client.get("/login")
    response = await client.post("/login", data={"username": "admin", "password": "x"})
    assert response.status_code == 403
    rows = await AuditLog.select().where(AuditLog.action == "csrf.refused")
    assert [(r["actor"], r["target"]) for r in rows] == [("-", "POST /login")]


async def test_a_configuration_change_refused_on_the_slave_is_audited(login_as, app, monkeypatch):
    operator = await login_as("operator")
    slave = dataclasses.replace(
        app.state.settings, cluster_mode="slave", master_api_url="https://198.18.0.11:8443"
    )
    monkeypatch.setattr(app.state, "settings", slave)
    response = await operator.post("/domains", data={"name": "example.com"}, headers=csrf(operator))
    assert response.status_code == 403
    rows = await AuditLog.select().where(AuditLog.action == "config.refused-on-slave")
    assert [(r["actor"], r["target"], r["outcome"]) for r in rows] == [
        ("operator-user", "POST /domains", "denied")
    ]


async def test_a_65_character_username_attempt_is_audited_not_a_500(client):
    name = "a" * 65
    response = await login(client, name, "wrong-password-123")
    assert response.status_code == 422
    rows = await AuditLog.select().where(AuditLog.action == "login")
    assert len(rows) == 1
    assert rows[0]["outcome"] == "failed"
    assert rows[0]["actor"] == "a" * 63 + "…"  # cut to the column, marked as cut


async def test_a_username_with_a_nul_byte_is_audited_not_a_500(client):
    response = await login(client, "ad\x00min", "Admin123")
    assert response.status_code == 422
    rows = await AuditLog.select().where(AuditLog.action == "login")
    assert [(r["actor"], r["outcome"]) for r in rows] == [("ad\ufffdmin", "failed")]


async def test_an_audit_row_takes_any_actor_and_target():
    long = "x" * 5000
    await audit.record(long, "test.long", long, "f" * 60)
    row = await AuditLog.select().where(AuditLog.action == "test.long").first()
    assert len(row["actor"]) == 64 and row["actor"].endswith("…")
    assert len(row["target"]) == audit.TARGET_LENGTH and row["target"].endswith("…")
    assert len(row["source_ip"]) == 45
