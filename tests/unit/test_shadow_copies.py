"""The shadow store, receiver and client over real TLS sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import threading
import time

import pytest

from app.replication.shadow_client import ShadowClient, ShadowUnavailable
from app.replication.shadow_receiver import Receiver, server_context
from app.replication.shadow_store import Envelope, ShadowStore, StoreFull, decode
from tests.postfixhost import _self_signed

TOKEN = "t" * 40


def envelope(queue_id: str = "4ZabcDEF123", when: float | None = None) -> Envelope:
    return Envelope(queue_id, "a@ex.example", ["b@dest.example"], "192.0.2.1", when or time.time())


def test_a_stored_shadow_is_complete_under_its_queue_id_with_the_envelope_time(tmp_path):
    store = ShadowStore(tmp_path / "s", 1 << 20)
    path = store.put(envelope(when=1000.0), b"Subject: x\r\n\r\nbody\r\n")
    assert path.name == "4ZabcDEF123"
    assert os.stat(path).st_mtime == 1000.0
    got, message = decode(path.read_bytes())
    assert got.recipients == ["b@dest.example"]
    assert message == b"Subject: x\r\n\r\nbody\r\n"
    assert [p.name for p in path.parent.iterdir()] == ["4ZabcDEF123"]


def test_a_full_store_refuses_and_keeps_what_it_has(tmp_path):
    store = ShadowStore(tmp_path / "s", 4096)
    store.put(envelope("4ZfirstAAA"), b"x" * 3000)
    with pytest.raises(StoreFull):
        store.put(envelope("4ZsecondBB"), b"y" * 3000)
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["4ZfirstAAA"]
    # A restarted receiver counts what is on disk.
    assert ShadowStore(tmp_path / "s", 4096).used == store.used


def test_pruning_drops_only_shadows_older_than_the_snapshot(tmp_path):
    store = ShadowStore(tmp_path / "s", 1 << 20)
    store.put(envelope("4ZoldAAAAA", when=100.0), b"old")
    store.put(envelope("4ZnewBBBBB", when=200.0), b"new")
    marker = tmp_path / "shadow-prune-before"
    receiver = Receiver(store, TOKEN, 1 << 20, marker)
    marker.write_text("160.0\n")
    # 10 s margin: a shadow 5 s before the snapshot may not be in it yet
    assert receiver.prune_once() == 1
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["4ZnewBBBBB"]


@pytest.fixture
def peer(tmp_path):
    """A real receiver on a loopback port in its own thread; yields (port, pin, store)."""
    cert, key = tmp_path / "n.crt", tmp_path / "n.key"
    _self_signed(cert, key, "peer.test")
    pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).digest()
    store = ShadowStore(tmp_path / "store", 8192)
    receiver = Receiver(store, TOKEN, 8192, None)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def run() -> None:
        server = await asyncio.start_server(
            receiver.serve_connection, "127.0.0.1", 0, ssl=server_context(cert, key)
        )
        holder["port"] = server.sockets[0].getsockname()[1]
        holder["server"] = server
        ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await server.serve_forever()

    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    ready.wait(10)
    yield holder["port"], pin, store
    loop.call_soon_threadsafe(holder["server"].close)  # type: ignore[attr-defined]


def test_many_messages_in_flight_are_all_stored_over_persistent_connections(peer):
    port, pin, store = peer
    client = ShadowClient("127.0.0.1", port, pin, TOKEN, 5.0)
    ids = [f"4Zmany{n:05d}" for n in range(20)]
    threads = [threading.Thread(target=client.send, args=(envelope(i), b"m")) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in store.root.iterdir()) == ids
    assert 0 < client.idle.qsize() <= 20
    client.send(envelope("4ZreusedAAA"), b"m")  # over a pooled connection
    assert (store.root / "4ZreusedAAA").exists()


def test_a_receiver_with_another_certificate_never_gets_the_token(peer):
    port, _pin, store = peer
    client = ShadowClient("127.0.0.1", port, b"\0" * 32, TOKEN, 5.0)
    with pytest.raises(ShadowUnavailable, match="not the pinned"):
        client.send(envelope(), b"m")
    assert not any(store.root.iterdir())


def test_a_sender_with_the_wrong_token_stores_nothing(peer):
    port, pin, store = peer
    client = ShadowClient("127.0.0.1", port, pin, "w" * 40, 5.0)
    with pytest.raises(ShadowUnavailable, match="SHADOW_TOKEN"):
        client.send(envelope(), b"m")
    assert not any(store.root.iterdir())


def test_a_full_peer_store_is_no_copy(peer):
    port, pin, store = peer
    client = ShadowClient("127.0.0.1", port, pin, TOKEN, 5.0)
    with pytest.raises(ShadowUnavailable, match="FULL"):
        client.send(envelope(), b"x" * 8100)
    assert not any(store.root.iterdir())


def test_a_peer_that_is_down_is_reported_within_the_deadline(tmp_path):
    client = ShadowClient("127.0.0.1", 9, b"\0" * 32, TOKEN, 0.5)
    started = time.monotonic()
    with pytest.raises(ShadowUnavailable):
        client.send(envelope(), b"m")
    assert time.monotonic() - started < 1.0


def test_shadow_mode_off_configures_no_milter():
    from app.agent.postfix import shadow_settings

    assert shadow_settings({"SHADOW_MODE": "off"}) == {"smtpd_milters": ""}
    assert shadow_settings({"SHADOW_MODE": "require"})["milter_default_action"] == "tempfail"
    assert shadow_settings({})["milter_default_action"] == "accept"


def test_a_milter_that_is_down_is_seen_not_just_uncounted(tmp_path):
    import socket

    from app.agent.postfix import milter_state

    path = tmp_path / "milter.sock"
    assert milter_state("") == "off"
    assert milter_state(f"unix:{path}") == "not answering"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        assert milter_state(f"unix:{path}") == "answering"
    assert milter_state(f"unix:{path}") == "not answering"  # the socket file is left behind
