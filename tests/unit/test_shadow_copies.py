"""The shadow store, receiver and client over real TLS sockets on loopback."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
import threading
import time

import pytest

from app.replication import shadow_store
from app.replication.shadow_client import ShadowClient, ShadowUnavailable
from app.replication.shadow_receiver import Receiver, listen, serve, server_context
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
    store.put(envelope("4ZjustOldA", when=156.0), b"old")
    store.put(envelope("4ZmayMissA", when=157.5), b"maybe not in the snapshot")
    store.put(envelope("4ZnewBBBBB", when=200.0), b"new")
    marker = tmp_path / "shadow-prune-before"
    receiver = Receiver(store, TOKEN, 1 << 20, marker, copy_timeout=2.0)
    marker.write_text("160.0\n")
    # A shadow less than the copy's timeout + 1 s before the snapshot may not be in it yet.
    assert receiver.prune_once() == 2
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["4ZmayMissA", "4ZnewBBBBB"]


@pytest.fixture
def peer(tmp_path):
    """A real receiver on a loopback port in its own thread; yields (port, pin, store)."""
    cert, key = tmp_path / "n.crt", tmp_path / "n.key"
    _self_signed(cert, key, "peer.test")
    pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).digest()
    store = ShadowStore(tmp_path / "store", 8192)
    receiver = Receiver(store, TOKEN, 8192, None)
    listener = listen("127.0.0.1", 0)
    context = server_context(cert, key)
    threading.Thread(target=serve, args=(receiver, listener, context, False), daemon=True).start()
    yield listener.getsockname()[1], pin, store
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()


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
    from app.settings import load_agent_settings

    def milter(env: dict[str, str]) -> dict[str, str]:
        return shadow_settings(load_agent_settings(env))

    assert milter({"SHADOW_MODE": "off"}) == {"smtpd_milters": ""}
    assert milter({"SHADOW_MODE": "require"})["milter_default_action"] == "tempfail"
    assert milter({})["milter_default_action"] == "accept"


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


def test_every_put_returns_only_after_a_directory_fsync_that_began_after_its_rename(
    tmp_path, monkeypatch
):
    """Concurrent puts share directory fsyncs (group commit), but none returns before an
    fsync that started after its own rename has finished: that is what makes it durable."""
    store = ShadowStore(tmp_path / "s", 1 << 20)
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_rename, real_fsync_directory = os.rename, shadow_store.fsync_directory

    def rename(src, dst):
        real_rename(src, dst)
        with lock:
            events.append(("renamed", os.path.basename(dst)))

    def fsync_directory(path):
        with lock:
            events.append(("sync-start", ""))
        time.sleep(0.005)  # a disk's flush: lets renames of other threads pile up meanwhile
        real_fsync_directory(path)
        with lock:
            events.append(("sync-end", ""))

    monkeypatch.setattr(shadow_store.os, "rename", rename)
    monkeypatch.setattr(shadow_store, "fsync_directory", fsync_directory)

    def put(queue_id: str) -> None:
        store.put(envelope(queue_id), b"m")
        with lock:
            events.append(("returned", queue_id))

    ids = [f"4Zgroup{n:04d}" for n in range(40)]
    threads = [threading.Thread(target=put, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for queue_id in ids:
        renamed = events.index(("renamed", queue_id))
        returned = events.index(("returned", queue_id))
        starts = [i for i, e in enumerate(events) if e[0] == "sync-start" and i > renamed]
        assert starts, f"{queue_id} returned without an fsync after its rename"
        end = next(i for i, e in enumerate(events) if e[0] == "sync-end" and i > starts[0])
        assert end < returned, f"{queue_id} returned before its directory fsync ended"
    syncs = sum(1 for e in events if e[0] == "sync-start")
    assert syncs < len(ids)  # they were shared
    assert sorted(p.name for p in store.root.iterdir()) == ids


def test_malformed_frames_are_answered_no_and_store_nothing(peer):
    port, _pin, store = peer
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def exchange(payload: bytes) -> bytes:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with context.wrap_socket(raw) as sock:
            sock.sendall(f"HELLO {TOKEN}\n".encode())
            reader = sock.makefile("rb")
            assert reader.readline() == b"OK\n"
            sock.sendall(payload)
            return reader.readline()

    assert exchange(struct.pack(">I", 2 << 20)) == b"NO envelope too large\n"
    assert exchange(struct.pack(">I", 5) + b"{nope").startswith(b"NO ")
    bad_id = b'{"queue_id": "../../etc", "sender": "", "recipients": ["b@x"], "time": 1, "size": 1}'
    assert exchange(struct.pack(">I", len(bad_id)) + bad_id + b"m").startswith(b"NO not a queue ID")
    big = (
        b'{"queue_id": "4ZbigAAAAA", "sender": "", "recipients": ["b@x"], "time": 1, "size": 9999}'
    )
    assert exchange(struct.pack(">I", len(big)) + big) == b"NO size must be 0-8192\n"
    assert not any(store.root.iterdir())


def test_a_peer_that_did_not_answer_is_not_tried_again_for_each_message(monkeypatch):
    """A crashed peer answers nothing: without a pause every message would wait the whole
    SHADOW_TIMEOUT_MS. The next ones fail at once, one after the pause tries again."""
    monkeypatch.setattr("app.replication.shadow_client.PEER_DOWN_PAUSE", 0.3)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks TLS
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    client = ShadowClient("127.0.0.1", silent.getsockname()[1], b"\0" * 32, TOKEN, 0.2)
    try:
        with pytest.raises(ShadowUnavailable, match="cannot reach"):
            client.send(envelope(), b"m")
        tried = len(accepted)
        with pytest.raises(ShadowUnavailable, match="not tried again yet"):
            client.send(envelope(), b"m")
        assert len(accepted) == tried
        time.sleep(0.35)
        with pytest.raises(ShadowUnavailable, match="cannot reach"):
            client.send(envelope(), b"m")
        assert len(accepted) > tried
    finally:
        silent.close()
        for conn in accepted:
            conn.close()


def test_a_peer_that_answers_no_syn_is_given_up_long_before_shadow_timeout_ms():
    """A crashed peer answers no SYN. A listener whose accept queue is full drops SYNs the
    same way: the copy fails after the connect timeout, not after the 10 s deadline."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the accept queue; later SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    client = ShadowClient("127.0.0.1", port, b"\0" * 32, TOKEN, 10.0)
    started = time.monotonic()
    try:
        with pytest.raises(ShadowUnavailable, match="cannot reach"):
            client.send(envelope(), b"m")
        assert time.monotonic() - started < 2.0
    finally:
        for sock in (*fillers, full):
            sock.close()
