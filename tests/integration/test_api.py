"""The export the slave pulls and the queue-sync lease API, over the app's real HTTP stack."""

from __future__ import annotations

import asyncio
import hashlib
import json

from app.auth import tokens
from app.cluster import locks
from app.config import applied, service
from app.crypto import SecretBox
from app.db.tables import ApiToken, AppliedVersion, ClusterLock
from app.web.controllers import api

SECRET = "relay-secret-456"


async def _bearer(kind: str) -> dict[str, str]:
    return {"authorization": "Bearer " + await tokens.create(f"{kind}-token", kind, "test")}


async def _config(app) -> None:
    """Version 2 (a domain, its route with SMTP AUTH), applied on this node: recorded as a
    successful Apply records it (the agent is not part of these tests; test_config_pull.py runs
    the whole apply)."""
    actor = service.Actor("t")
    await service.add_domain(actor, "example.com")
    await service.set_route(
        actor, app.state.box, "example.com", "smtp.example.net", 587, "encrypt", "relayuser", SECRET
    )
    await applied.record_own(app.state.settings.node_id, 2)


async def test_the_export_without_a_version_is_empty(client):
    response = await client.get("/api/config/export", headers=await _bearer("read"))
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 0
    assert body["config"] == {"sender_domains": [], "trusted_networks": []}


async def test_a_draft_is_not_exported_until_it_is_applied(client, app):
    await _config(app)
    await service.add_domain(service.Actor("t"), "draft.example")  # version 3, not applied
    headers = await _bearer("read")
    body = (await client.get("/api/config/export", headers=headers)).json()
    assert body["version"] == 2
    assert [d["name"] for d in body["config"]["sender_domains"]] == ["example.com"]
    assert body["node_id"] == app.state.settings.node_id and body["applied_at"]

    await applied.record_own(app.state.settings.node_id, 3)
    body = (await client.get("/api/config/export", headers=headers)).json()
    assert body["version"] == 3
    assert "draft.example" in [d["name"] for d in body["config"]["sender_domains"]]


async def test_the_long_poll_waits_for_an_apply_not_for_a_draft(client, app):
    await _config(app)
    headers = await _bearer("cluster")
    waiting = asyncio.create_task(
        client.get("/api/config/export", params={"newer_than": 2, "wait": 20}, headers=headers)
    )
    await service.add_domain(service.Actor("t"), "draft.example")  # version 3, a draft
    await asyncio.sleep(1.0)
    assert not waiting.done(), "the export answered for a version nobody applied"
    await applied.record_own(app.state.settings.node_id, 3)
    response = await asyncio.wait_for(waiting, 5)
    assert response.json()["version"] == 3


async def test_a_read_token_gets_the_applied_version_without_secrets(client, app):
    await _config(app)
    response = await client.get("/api/config/export", headers=await _bearer("read"))
    assert response.status_code == 200
    assert SECRET not in response.text
    body = response.json()
    assert body["version"] == 2
    assert body["secrets"] == "omitted"
    route = body["config"]["sender_domains"][0]["route"]
    assert route["auth_password_set"] is True
    assert "auth_password_enc" not in route
    canonical = json.dumps(body["config"], sort_keys=True, separators=(",", ":")).encode()
    assert body["checksum"] == hashlib.sha256(canonical).hexdigest()


async def test_a_cluster_token_gets_secrets_sealed_for_the_peer_only(client, app, tmp_path):
    await _config(app)
    response = await client.get("/api/config/export", headers=await _bearer("cluster"))
    assert SECRET not in response.text
    route = response.json()["config"]["sender_domains"][0]["route"]
    sealed = route["auth_password_sealed"]
    # The peer shares the key file: it can turn the sealed value into its own at-rest secret.
    peer = SecretBox(app.state.settings.secret_key_file)
    assert peer.decrypt(peer.open_from_peer(sealed)) == SECRET
    # The at-rest key itself does not open the export form: the two are different keys.
    stored = await service.latest_version()
    assert stored["snapshot"]["sender_domains"][0]["route"]["auth_password_enc"] != sealed
    other = tmp_path / "other.key"
    from app.crypto import SecretKeyError, ensure_secret_key

    ensure_secret_key(other)
    try:
        SecretBox(other).open_from_peer(sealed)
    except SecretKeyError as exc:
        assert "key files differ" in str(exc)
    else:
        raise AssertionError("a different key opened the sealed secret")


async def test_a_revoked_token_is_refused(client):
    headers = await _bearer("read")
    await tokens.revoke("read-token", "test")
    assert (await client.get("/api/config/export", headers=headers)).status_code == 401


async def test_tokens_are_stored_hashed(client):
    headers = await _bearer("read")
    token = headers["authorization"].split()[1]
    row = await ApiToken.select().first()
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps(row, default=str)


async def _acquire(client, headers, holder, ttl=30.0):
    return await client.post(
        "/api/sync-lock/acquire", json={"holder": holder, "ttl_seconds": ttl}, headers=headers
    )


async def test_the_lock_is_a_lease_with_a_growing_fencing_token(client):
    headers = await _bearer("cluster")
    first = await _acquire(client, headers, "node-a")
    assert first.status_code == 200
    token = first.json()["fencing_token"]
    conflict = await _acquire(client, headers, "node-b")
    assert conflict.status_code == 409
    assert conflict.json()["holder"] == "node-a"
    renewed = await _acquire(client, headers, "node-a")
    assert renewed.status_code == 200
    assert renewed.json()["fencing_token"] == token + 1
    released = await client.post(
        "/api/sync-lock/release",
        json={"holder": "node-a", "fencing_token": token + 1},
        headers=headers,
    )
    assert released.json() == {"released": True}
    taken = await _acquire(client, headers, "node-b")
    assert taken.status_code == 200
    assert taken.json()["fencing_token"] == token + 2


async def test_an_expired_lease_goes_to_the_next_holder(client):
    headers = await _bearer("cluster")
    assert (await _acquire(client, headers, "node-a", ttl=1)).status_code == 200
    assert (await _acquire(client, headers, "node-b")).status_code == 409
    await asyncio.sleep(1.2)
    taken = await _acquire(client, headers, "node-b")
    assert taken.status_code == 200
    # The old holder's release with its stale token changes nothing.
    stale = await client.post(
        "/api/sync-lock/release", json={"holder": "node-a", "fencing_token": 1}, headers=headers
    )
    assert stale.status_code == 409
    assert (await _acquire(client, headers, "node-a")).status_code == 409


async def test_lock_arguments_are_checked(client):
    headers = await _bearer("cluster")
    assert (await _acquire(client, headers, "bad holder")).status_code == 400
    assert (await _acquire(client, headers, "node-a", ttl=0)).status_code == 400
    assert (await _acquire(client, headers, "node-a", ttl=100000)).status_code == 400


async def test_a_cluster_token_cannot_take_an_unknown_lock_name(client):
    headers = await _bearer("cluster")
    for name in ("switchover", "anything", "queue-sync2", ""):
        body = {"holder": "node-a", "ttl_seconds": 30, "name": name}
        response = await client.post("/api/sync-lock/acquire", json=body, headers=headers)
        assert response.status_code == 400, name
        assert "name must be queue-sync" in response.json()["detail"]
    for ttl in (61, 600):
        response = await _acquire(client, headers, "node-a", ttl=ttl)
        assert response.status_code == 400, ttl
        assert "ttl_seconds must be between 1 and 60" in response.json()["detail"]
    assert await ClusterLock.count() == 0

    # The switchover lock, held locally, cannot be released over the API either.
    lease = await locks.acquire(locks.SWITCHOVER, "a-switchover", ttl_seconds=60)
    response = await client.post(
        "/api/sync-lock/release",
        json={"holder": "a-switchover", "fencing_token": lease.fencing_token, "name": "switchover"},
        headers=headers,
    )
    assert response.status_code == 400
    assert await locks.held(locks.SWITCHOVER)
    assert (await _acquire(client, headers, "node-a", ttl=60)).status_code == 200


async def test_an_oversized_api_body_is_refused_with_413(client, app):
    headers = await _bearer("cluster") | {"content-type": "application/json"}
    bodies = {
        "/api/sync-lock/acquire": {"holder": "node-a", "ttl_seconds": 30},
        "/api/sync-lock/release": {"holder": "node-a", "fencing_token": 1},
        "/api/nodes/applied": {
            "node_id": "b",
            "number": 3,
            "master_number": 7,
            "applied_at": "2024-05-01T10:00:00+00:00",
        },
    }
    posts = {
        r.path
        for r in app.routes
        # The automation API's bodies: test_automation_api.py checks its cap.
        if r.path.startswith("/api/") and not r.path.startswith("/api/v1/") and "POST" in r.methods
    }
    assert posts == set(bodies)  # a new POST under /api/ gets a body here, and a cap
    for path, body in bodies.items():
        # Valid JSON, padded with whitespace past the cap: without one it would be accepted.
        padded = json.dumps(body) + " " * api.MAX_BODY_BYTES
        response = await client.post(path, content=padded, headers=headers)
        assert response.status_code == 413, path
    assert await ClusterLock.count() == 0
    assert await AppliedVersion.count() == 0
    # The same bodies, unpadded, are taken.
    response = await client.post(
        "/api/sync-lock/acquire", json=bodies["/api/sync-lock/acquire"], headers=headers
    )
    assert response.status_code == 200


async def test_two_nodes_racing_for_the_lock_get_one_grant(client):
    headers = await _bearer("cluster")
    answers = await asyncio.gather(*[_acquire(client, headers, f"node-{i}") for i in range(8)])
    assert sorted(a.status_code for a in answers) == [200] + [409] * 7


async def test_the_openapi_schema_documents_the_api(client):
    schema = (await client.get("/api/schema/openapi.json")).json()
    for path in ("/api/config/export", "/api/sync-lock/acquire", "/api/sync-lock/release"):
        assert path in schema["paths"]
