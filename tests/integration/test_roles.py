"""The role matrix: every route x every role, allowed or 403 (with an audit entry).

The matrix must name every route the app has: a new route without an entry fails the first test.
"""

from __future__ import annotations

import pytest

from app.auth import tokens
from app.auth.roles import Role
from app.config import service
from app.db.tables import AuditLog
from tests.conftest import csrf, make_user

# (method, path template, least role); role None = any logged-in user, even before the forced
# password change.
GUI = [
    ("GET", "/", "readonly"),
    ("GET", "/dashboard/rejects", "readonly"),
    ("GET", "/dashboard/traffic", "readonly"),
    ("GET", "/audit", "readonly"),
    ("GET", "/domains", "readonly"),
    ("POST", "/domains", "operator"),
    ("POST", "/domains/{name}/delete", "operator"),
    ("GET", "/routes", "readonly"),
    ("GET", "/routes/tools", "readonly"),
    ("POST", "/routes/which", "readonly"),
    ("POST", "/routes/{domain}/test", "operator"),
    ("GET", "/routes/{domain}", "readonly"),
    ("POST", "/routes/{domain}", "operator"),
    ("POST", "/routes/{domain}/delete", "operator"),
    ("GET", "/networks", "readonly"),
    ("POST", "/networks", "operator"),
    ("POST", "/networks/delete", "operator"),
    ("GET", "/tracking", "readonly"),
    ("GET", "/tracking/{queue_id}", "readonly"),
    ("GET", "/rejects", "readonly"),
    ("GET", "/queue", "readonly"),
    ("POST", "/queue/{queue_id}/{action}", "operator"),
    ("POST", "/queue/flush", "operator"),
    ("POST", "/queue/release-held", "operator"),
    ("GET", "/versions", "readonly"),
    ("GET", "/versions/{number}", "readonly"),
    ("GET", "/versions/diff", "readonly"),
    ("POST", "/versions/{number}/rollback", "operator"),
    ("POST", "/config/test", "operator"),
    ("POST", "/config/apply", "operator"),
    ("GET", "/users", "admin"),
    ("POST", "/users", "admin"),
    ("POST", "/users/{username}/role", "admin"),
    ("POST", "/users/{username}/reset", "admin"),
    ("POST", "/users/{username}/delete", "admin"),
    ("GET", "/tokens", "admin"),
    ("POST", "/tokens", "admin"),
    ("POST", "/tokens/{name}/revoke", "admin"),
    ("POST", "/users/{username}/second-factor/reset", "admin"),
    ("POST", "/users/second-factor-policy", "admin"),
    ("GET", "/cluster", "readonly"),
    ("POST", "/cluster/switchover", "admin"),
    ("GET", "/cluster/switchover/{run_id}", "admin"),
    ("GET", "/password", None),
    ("POST", "/password", None),
    ("POST", "/language", None),
    ("POST", "/logout", None),
    ("GET", "/mfa", None),
    ("POST", "/mfa/totp/new", None),
    ("POST", "/mfa/totp", None),
    ("POST", "/mfa/keys/options", None),
    ("POST", "/mfa/keys", None),
    ("POST", "/mfa/recovery", None),
    ("POST", "/mfa/factors/{factor_id}/remove", None),
    ("GET", "/mfa/verify", None),
    ("POST", "/mfa/verify/totp", None),
    ("POST", "/mfa/verify/recovery", None),
    ("POST", "/mfa/verify/key/options", None),
    ("POST", "/mfa/verify/key", None),
]
API = [
    ("GET", "/api/config/export", "read"),
    ("POST", "/api/nodes/applied", "cluster"),
    ("POST", "/api/sync-lock/acquire", "cluster"),
    ("POST", "/api/sync-lock/release", "cluster"),
    ("GET", "/api/queue/imported", "cluster"),
    ("GET", "/api/cluster/status", "cluster"),
    ("GET", "/api/cluster/traffic", "cluster"),
    ("GET", "/metrics", "read"),
    ("GET", "/api/v1/sender-domains", "read"),
    ("POST", "/api/v1/sender-domains", "write"),
    ("GET", "/api/v1/sender-domains/{name}", "read"),
    ("PUT", "/api/v1/sender-domains/{name}", "write"),
    ("DELETE", "/api/v1/sender-domains/{name}", "write"),
    ("GET", "/api/v1/routes", "read"),
    ("POST", "/api/v1/routes", "write"),
    ("GET", "/api/v1/routes/{domain}", "read"),
    ("PUT", "/api/v1/routes/{domain}", "write"),
    ("DELETE", "/api/v1/routes/{domain}", "write"),
    ("GET", "/api/v1/trusted-networks", "read"),
    ("POST", "/api/v1/trusted-networks", "write"),
    ("GET", "/api/v1/trusted-networks/{cidr}", "read"),
    ("PUT", "/api/v1/trusted-networks/{cidr}", "write"),
    ("DELETE", "/api/v1/trusted-networks/{cidr}", "write"),
    ("POST", "/api/v1/config/test", "write"),
    ("POST", "/api/v1/config/apply", "write"),
    ("GET", "/api/v1/versions", "read"),
    ("GET", "/api/v1/versions/{number}", "read"),
    ("GET", "/api/v1/versions/diff", "read"),
    ("POST", "/api/v1/versions/{number}/rollback", "write"),
    ("GET", "/api/v1/queue", "read"),
    ("POST", "/api/v1/queue/flush", "write"),
    ("POST", "/api/v1/queue/release-held", "write"),
    ("POST", "/api/v1/queue/{queue_id}/{action}", "write"),
]
# JSON bodies of API calls (others: the sync-lock body).
BODIES = {
    "/api/nodes/applied": {
        "node_id": "b",
        "number": 1,
        "master_number": 1,
        "applied_at": "2024-01-01T00:00:00+00:00",
    }
}
PUBLIC = [("GET", "/login"), ("POST", "/login"), ("GET", "/healthz"), ("GET", "/api/schema")]

VALUES = {
    "name": "example.com",
    "domain": "example.com",
    "number": "1",
    "username": "victim",
    "queue_id": "4dLq2G1xZ9z9vxL",
    "action": "hold",
    "factor_id": "1",
    "cidr": "192.0.2.0/24",
    "run_id": "no-such-run",
}
FORMS = {
    "/domains": {"name": "new.example"},
    "/routes/{domain}": {"host": "smtp.example.net", "port": "25", "tls_mode": "may"},
    "/networks": {"cidr": "10.0.0.0/8"},
    "/networks/delete": {"cidr": "192.0.2.0/24"},
    "/users": {"username": "newuser", "password": "a-long-password-1", "role": "readonly"},
    "/users/{username}/role": {"role": "operator"},
    "/users/{username}/reset": {"password": "another-long-password"},
    "/tokens": {"name": "newtoken", "kind": "read"},
    "/language": {"language": "de"},
}


def _path(template: str) -> str:
    path = template
    for key, value in VALUES.items():
        path = path.replace("{" + key + "}", value)
    if template == "/tokens/{name}/revoke":
        path = "/tokens/t1/revoke"
    return path


async def _fixtures() -> None:
    actor = service.Actor("test")
    await service.add_domain(actor, "example.com")
    await service.add_network(actor, "192.0.2.0/24")
    await make_user("victim", "readonly")
    await tokens.create("t1", "read", "test")


def test_the_matrix_covers_every_route(app):
    known = {(m, p) for m, p, _ in GUI + API} | set(PUBLIC)
    routes = set()
    for route in app.routes:
        path = route.path_format if hasattr(route, "path_format") else route.path
        if path.startswith(("/static", "/api/schema/")):
            continue
        for method in getattr(route, "methods", ()):
            if method in ("HEAD", "OPTIONS"):
                continue
            routes.add((method, path.replace(":int", "").replace(":str", "")))
    assert routes - known == set()


@pytest.mark.parametrize(("method", "template", "least"), GUI)
@pytest.mark.parametrize("role", ["readonly", "operator", "admin"])
async def test_each_role_gets_exactly_its_rights(login_as, role, method, template, least):
    await _fixtures()
    client = await login_as(role)
    path = _path(template)
    data = FORMS.get(template, {})
    if method == "GET":
        response = await client.get(path, follow_redirects=False)
    else:
        response = await client.post(path, data=data, headers=csrf(client), follow_redirects=False)
    allowed = least is None or Role.parse(role) >= Role.parse(least)
    if allowed:
        assert response.status_code != 403, response.text
        if response.status_code == 303 and template != "/logout":
            assert not response.headers["location"].startswith("/login")
    else:
        assert response.status_code == 403
        entry = await AuditLog.select().where(AuditLog.action == "access.denied").first()
        assert entry["actor"] == f"{role}-user"
        assert entry["outcome"] == "denied"
        assert path in entry["target"]


@pytest.mark.parametrize(("method", "template", "least"), GUI)
async def test_anonymous_callers_are_sent_to_the_login(client, method, template, least):
    path = _path(template)
    if method == "GET":
        response = await client.get(path, follow_redirects=False)
    else:
        await client.get("/login")
        response = await client.post(path, headers=csrf(client), follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")


@pytest.mark.parametrize(("method", "template", "kind"), API)
@pytest.mark.parametrize("caller", ["none", "bogus", "read", "write", "cluster", "session"])
async def test_the_api_takes_only_tokens_of_the_right_kind(
    client, login_as, caller, method, template, kind
):
    await _fixtures()
    path = _path(template)
    headers = {}
    if caller == "bogus":
        headers["authorization"] = "Bearer mrt_not-a-token"
    elif caller in tokens.KINDS:
        headers["authorization"] = "Bearer " + await tokens.create(f"tok-{caller}", caller, "t")
    if caller == "session":
        client = await login_as("admin")
    body = BODIES.get(path, {"holder": "node-a", "fencing_token": 1})
    response = await client.request(method, path, headers=headers, json=body)
    if caller in ("none", "bogus", "session"):
        # A GUI session is no API credential: the API wants a token.
        assert response.status_code == 401
    elif kind != "read" and caller != kind:
        assert response.status_code == 403
        assert await AuditLog.count().where(AuditLog.action == "access.denied") == 1
    elif path.startswith("/api/v1/"):
        # Let in: what it answers (400 for the lock body, 404, 503 without an agent) is
        # test_automation_api.py's business.
        assert response.status_code not in (401, 403), response.text
    else:
        assert response.status_code in (200, 204, 409)


async def test_the_gui_offers_only_what_the_role_may_do(login_as):
    await _fixtures()
    readonly = await login_as("readonly")
    page = (await readonly.get("/domains")).text
    assert 'id="domain-form"' not in page
    assert "/domains/example.com/delete" not in page
    assert 'href="/users"' not in page
    assert 'id="test-config"' not in (await readonly.get("/versions")).text
    operator = await login_as("operator")
    page = (await operator.get("/domains")).text
    assert 'id="domain-form"' in page
    assert 'href="/users"' not in page
    admin = await login_as("admin")
    assert 'href="/users"' in (await admin.get("/")).text
