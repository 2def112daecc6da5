"""The shadow store, receiver and client over real TLS sockets on loopback."""

from __future__ import annotations

import asyncio
import email
import hashlib
import json
import os
import socket
import ssl
import struct
import threading
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from app.agent.replica import Report
from app.replication import shadow_receiver, shadow_store, sync_mark
from app.replication.milter_protocol import Message
from app.replication.shadow_client import ShadowClient, ShadowUnavailable
from app.replication.shadow_counters import FLUSH_SECONDS, Counters, read_counters
from app.replication.shadow_import import (
    INJECT_AT_ONCE,
    Inject,
    import_shadows,
    submissions,
)
from app.replication.shadow_milter import first_hop
from app.replication.shadow_receiver import Receiver, listen, serve, server_context
from app.replication.shadow_store import Envelope, Requests, ShadowStore, StoreFull, records
from app.replication.sync_mark import Coverage, Moment, SyncMark
from app.settings import parse_fingerprint
from app.tls import key_fingerprint
from tests.postfixhost import _self_signed

TOKEN = "t" * 40


def envelope(
    queue_id: str = "4ZabcDEF123", when: float | None = None, sender: str = "a@ex.example"
) -> Envelope:
    return Envelope(queue_id, sender, ["b@dest.example"], "192.0.2.1", when or time.time())


def before(wall: float) -> Coverage:
    """The coverage of an earlier release's mark (its time only) that covers every shadow
    stamped before `wall`."""
    return Coverage(SyncMark(Moment(wall + sync_mark.PRUNE_SLACK_SECONDS)), 0.0)


def segments(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def stored(root: Path) -> list[tuple[Envelope, bytes]]:
    """Every shadow in the store's segments, read back as the import reads them."""
    found = []
    for name in filter(shadow_store.is_segment, segments(root)):
        fd = os.open(root / name, os.O_RDONLY)
        try:
            for record in records(fd, 1 << 30):
                assert record.envelope and record.message is not None, record.problem
                found.append((record.envelope, record.message))
        finally:
            os.close(fd)
    return found


def stored_ids(root: Path) -> list[str]:
    return sorted(e.queue_id for e, _ in stored(root))


def test_a_stored_shadow_reads_back_whole_with_its_envelope(tmp_path):
    store = ShadowStore(tmp_path / "s", 1 << 20)
    store.put(envelope(when=1000.0), b"Subject: x\r\n\r\nbody\r\n")
    store.put(envelope("4ZsecondAAA"), b"second")
    [(got, message), (second, _)] = stored(tmp_path / "s")
    assert (got.queue_id, got.time, got.recipients) == ("4ZabcDEF123", 1000.0, ["b@dest.example"])
    assert message == b"Subject: x\r\n\r\nbody\r\n"
    assert second.queue_id == "4ZsecondAAA"
    [name] = segments(tmp_path / "s")  # stored at the same moment: one segment
    assert shadow_store.is_segment(name)
    assert store.count() == 2 and shadow_store.stored(tmp_path / "s") == (2, store.used)


def test_a_full_store_refuses_and_keeps_what_it_has(tmp_path):
    store = ShadowStore(tmp_path / "s", 4096)
    store.put(envelope("4ZfirstAAA"), b"x" * 3000)
    with pytest.raises(StoreFull):
        store.put(envelope("4ZsecondBB"), b"y" * 3000)
    assert stored_ids(tmp_path / "s") == ["4ZfirstAAA"]
    # A restarted receiver counts what is on disk.
    again = ShadowStore(tmp_path / "s", 4096)
    assert (again.used, again.count()) == (store.used, 1)


def test_pruning_drops_only_segments_older_than_the_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(shadow_store, "SEGMENT_SECONDS", 0.0)  # a segment per shadow
    store = ShadowStore(tmp_path / "s", 1 << 20)
    store.put(envelope("4ZoldAAAAA", when=100.0), b"old")
    store.put(envelope("4ZjustOldA", when=156.0), b"old")
    store.put(envelope("4ZmayMissA", when=157.5), b"maybe not in the snapshot")
    store.put(envelope("4ZnewBBBBB", when=200.0), b"new")
    marker = tmp_path / "shadow-prune-before"
    receiver = Receiver(store, TOKEN, 1 << 20, marker, copy_timeout=2.0)
    assert receiver.prune_once() == 0  # no sync yet
    marker.write_text("160.0\n")
    # A shadow less than the copy's timeout + 1 s before the snapshot may not be in it yet.
    assert receiver.prune_once() == 2
    assert stored_ids(tmp_path / "s") == ["4ZmayMissA", "4ZnewBBBBB"]
    assert store.count() == 2


def test_the_replica_reaches_the_disk_before_a_shadow_it_covers_goes(tmp_path, monkeypatch):
    """rsync fsyncs nothing: the receiver syncs the replica's filesystem (syncfs) before it
    drops a shadow, and drops nothing when that fails. Whether the data survives a power cut
    cannot be shown here; the order, and the real syncfs call, can."""
    store = ShadowStore(tmp_path / "s", 1 << 20)
    store.put(envelope("4ZoldAAAAA", when=100.0), b"old")
    store.close_old(float("inf"))
    marker = tmp_path / "shadow-prune-before"
    marker.write_text("160.0\n")
    receiver = Receiver(store, TOKEN, 1 << 20, marker, copy_timeout=2.0)
    synced: list[list[str]] = []
    real_sync = shadow_receiver.sync_filesystem

    def sync_then_look(path: Path) -> None:
        real_sync(path)
        synced.append(segments(tmp_path / "s"))

    def failing_sync(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(shadow_receiver, "sync_filesystem", failing_sync)
    with pytest.raises(OSError):
        receiver.prune_once()
    assert stored_ids(tmp_path / "s") == ["4ZoldAAAAA"]
    monkeypatch.setattr(shadow_receiver, "sync_filesystem", sync_then_look)
    assert receiver.prune_once() == 1
    assert len(synced) == 1 and len(synced[0]) == 1  # the segment was still there
    assert receiver.prune_once() == 0 and len(synced) == 1  # nothing to drop: no syncfs
    with pytest.raises(OSError, match="No such file"):
        real_sync(tmp_path / "missing")


def test_a_segment_holding_a_newer_shadow_stays_until_it_is_covered_too(tmp_path):
    store = ShadowStore(tmp_path / "s", 1 << 20)
    store.put(envelope("4ZoldAAAAA", when=100.0), b"old")
    store.put(envelope("4ZnewBBBBB", when=200.0), b"new")
    assert store.prune(before(150.0)) == 0
    assert store.prune(before(250.0)) == 0  # it still takes records: not closed yet
    store.close_old(float("inf"))
    assert store.prune(before(250.0)) == 2
    assert segments(tmp_path / "s") == []


def test_a_record_cut_short_by_a_crash_ends_its_segment_and_loses_nothing_before(tmp_path):
    store = ShadowStore(tmp_path / "s", 1 << 20)
    store.put(envelope("4ZfirstAAA"), b"first")
    store.put(envelope("4ZsecondBB"), b"second")
    store.close_old(float("inf"))
    [name] = segments(tmp_path / "s")
    path = tmp_path / "s" / name
    path.write_bytes(path.read_bytes()[:-3])
    fd = os.open(path, os.O_RDONLY)
    try:
        got = list(records(fd, 1 << 20))
    finally:
        os.close(fd)
    assert got[0].envelope and got[0].envelope.queue_id == "4ZfirstAAA"
    assert (got[1].envelope, got[1].problem) == (None, "a record cut short")
    assert ShadowStore(tmp_path / "s", 1 << 20).count() == 1
    # A damaged byte in a message is found by its checksum.
    data = bytearray(path.read_bytes())
    data[len(shadow_store.encode(envelope("4ZfirstAAA"), b"first")) - 2] ^= 1
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert "damaged" in next(records(fd, 1 << 20)).problem
    finally:
        os.close(fd)


def test_a_store_of_an_earlier_release_moves_into_a_segment_when_the_receiver_starts(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    old = envelope("4ZlegacyAAA", when=123.0)
    line = json.dumps(old.as_dict()).encode()
    (root / "4ZlegacyAAA").write_bytes(shadow_store.MAGIC_V1 + line + b"\n" + b"message")
    (root / "4ZbrokenAAA").write_bytes(b"not a shadow")
    (root / ".4ZtornAAAA.1234").write_bytes(b"never acknowledged")
    store = ShadowStore(root, 1 << 20)
    assert stored_ids(root) == ["4ZlegacyAAA"]
    [(moved, message)] = stored(root)
    assert (moved, message) == (old, b"message")
    names = segments(root)
    assert "4ZlegacyAAA" not in names and ".4ZtornAAAA.1234" not in names
    assert "4ZbrokenAAA" in names  # left for the operator, counted in the bound
    assert store.used == sum((root / n).stat().st_size for n in names)


def test_an_earlier_releases_store_near_its_bound_still_moves_whole(tmp_path):
    """A record is a few bytes larger than the file it comes from: a store that was nearly
    full must not refuse its own shadows (the receiver would then never start)."""
    root = tmp_path / "s"
    root.mkdir()
    ids = [f"4Zfull{n:05d}" for n in range(20)]
    for queue_id in ids:
        line = json.dumps(envelope(queue_id, when=123.0).as_dict()).encode()
        (root / queue_id).write_bytes(shadow_store.MAGIC_V1 + line + b"\n" + b"m" * 900)
    bound = sum(p.stat().st_size for p in root.iterdir())
    ShadowStore(root, bound)
    assert stored_ids(root) == ids
    assert not any(shadow_store.QUEUE_ID.fullmatch(name) for name in segments(root))


def test_a_failed_fdatasync_acknowledges_nothing_it_covered_and_retires_its_segment(
    tmp_path, monkeypatch
):
    """Linux reports a lost write to one fdatasync only: a later one succeeds. A record that
    was written before the failure must not be acknowledged by that later success."""
    store = ShadowStore(tmp_path / "s", 1 << 20)
    store.put(envelope("4ZbeforeAAA"), b"durable")
    failing = {"left": 1}

    class FailingOs:
        def __getattr__(self, name: str):
            return getattr(os, name)

        def fdatasync(self, fd):
            if failing["left"]:
                failing["left"] -= 1
                raise OSError(5, "Input/output error")
            os.fdatasync(fd)

    monkeypatch.setattr(shadow_store, "os", FailingOs())
    with pytest.raises(OSError):
        store.put(envelope("4ZlostAAAAA"), b"not acknowledged")
    with pytest.raises(OSError, match="fdatasync failed"):
        store._commit(store.written)  # what a second waiter for that record would do
    store.put(envelope("4ZafterAAAA"), b"durable again")
    assert len(segments(tmp_path / "s")) == 2  # the failed segment takes no more


def inject_into(delivered: list[tuple[str, list[str], bytes]]):
    def inject(envelope: Envelope, message: bytes) -> None:
        delivered.append((envelope.sender, envelope.recipients, message))

    return inject


def shadows_of(root: Path, prefix: str, count: int) -> list[str]:
    """A store holding `count` shadows of ex.example; their queue IDs in the order stored."""
    store = ShadowStore(root, 1 << 20)
    ids = [f"4Z{prefix}{i:05d}" for i in range(count)]
    for queue_id in ids:
        store.put(envelope(queue_id), b"m")
    return ids


def take_over(root: Path, inject: Inject) -> Report:
    """The import of a promotion with no replica: every shadow of ex.example is uncovered."""
    return import_shadows(root, set(), None, frozenset({"ex.example"}), 1 << 20, inject)


def test_the_clients_dsn_and_body_requests_travel_with_the_copy_to_sendmail(tmp_path):
    requests = Requests.from_esmtp(
        ["SIZE=120", "RET=hdrs", "ENVID=track+2B42", "BODY=8BITMIME", "SMTPUTF8"],
        [["NOTIFY=NEVER"], [], ["NOTIFY=success,failure", "ORCPT=rfc822;c@x.example"]],
    )
    assert requests == Requests(
        "HDRS", "track+42", ("NEVER", "", "SUCCESS,FAILURE"), "8BITMIME", True
    )
    rcpts = ["a@x.example", "b@x.example", "c@x.example"]
    sent = Envelope("4ZdsnABC123", "app@ex.example", rcpts, "192.0.2.1", 1.0, requests)
    ShadowStore(tmp_path / "s", 1 << 20).put(sent, b"m")
    [(got, _)] = stored(tmp_path / "s")
    assert got == sent
    common = ["sendmail", "-G", "-i", "-R", "hdrs", "-V", "track+42", "-B", "8BITMIME"]
    common += ["-O", "smtputf8=yes"]
    # sendmail takes one NOTIFY for all its recipients: one submission per distinct request.
    assert submissions(got) == [
        [*common, "-N", "never", "-f", "app@ex.example", "--", "a@x.example"],
        [*common, "-f", "app@ex.example", "--", "b@x.example"],
        [*common, "-N", "success,failure", "-f", "app@ex.example", "--", "c@x.example"],
    ]
    assert submissions(envelope()) == [
        ["sendmail", "-G", "-i", "-f", "a@ex.example", "--", "b@dest.example"]
    ]
    # sendmail would read `-V QQ` as its old VERP option and QQ as a recipient.
    two = Envelope("4ZtwoABC123", "a@ex.example", ["b@dest.example"], "192.0.2.1", 1.0,
                   Requests(envid="QQ"))  # fmt: skip
    assert submissions(two) == [
        ["sendmail", "-G", "-i", "-f", "a@ex.example", "--", "b@dest.example"]
    ]


@pytest.mark.parametrize(
    "forged",
    [
        {"envid": "a\nb"},
        {"envid": "x" * 101},
        {"ret": "EVERYTHING"},
        {"body": "BINARYMIME"},
        {"notify": ["NEVER", "NEVER"]},  # two requests for one recipient
        {"notify": ["NEVER,SUCCESS"]},
        {"smtputf8": "yes"},
    ],
)
def test_requests_a_peer_could_forge_are_refused(forged):
    raw = envelope().as_dict() | {"requests": Requests().as_dict() | forged}
    with pytest.raises(shadow_store.ShadowFormatError):
        Envelope.from_dict(raw)


def test_a_shadow_without_requests_reads_as_a_client_that_asked_none():
    # Most clients ask nothing; a shadow of an earlier release could not say either.
    plain = Requests.from_esmtp(["SIZE=2300"], [[], []])
    assert plain == Requests()
    raw = envelope().as_dict()
    assert "requests" not in raw
    assert Envelope.from_dict(raw).requests == Requests()


def test_the_import_injects_each_uncovered_shadow_once_and_drops_the_segment(tmp_path):
    store = ShadowStore(tmp_path / "s", 1 << 20)
    store.put(envelope("4ZprunedAAA", when=100.0), b"the last sync covers it")
    store.put(envelope("4ZinReplica", when=300.0), b"the replica holds it")
    store.put(envelope("4ZtakeOverA", when=300.0), b"only here")
    store.put(envelope("4ZtakeOverA", when=300.0), b"only here")  # the client's retry
    delivered: list[tuple[str, list[str], bytes]] = []
    report = import_shadows(
        tmp_path / "s",
        {"4ZinReplica"},
        before(200.0),
        frozenset({"ex.example"}),
        1 << 20,
        inject_into(delivered),
    )
    assert report.imported == ["4ZtakeOverA"]
    assert delivered == [("a@ex.example", ["b@dest.example"], b"only here")]
    assert segments(tmp_path / "s") == []


def test_the_import_hands_shadows_to_sendmail_side_by_side_and_reports_them_in_order(tmp_path):
    ids = shadows_of(tmp_path / "s", "side", 2 * INJECT_AT_ONCE)
    # Each injection waits until INJECT_AT_ONCE of them are under way: one at a time, the
    # first would wait in vain.
    all_at_once = threading.Barrier(INJECT_AT_ONCE, timeout=10)
    report = take_over(tmp_path / "s", lambda envelope, message: all_at_once.wait() and None)
    assert report.imported == ids
    assert segments(tmp_path / "s") == []


def test_after_a_failed_injection_no_further_shadow_is_begun(tmp_path):
    ids = shadows_of(tmp_path / "s", "stop", 5 * INJECT_AT_ONCE)
    begun: list[str] = []

    def sendmail_that_fails_first(envelope: Envelope, message: bytes) -> None:
        begun.append(envelope.queue_id)
        if envelope.queue_id == ids[0]:
            raise OSError("sendmail failed")
        time.sleep(0.2)

    report = take_over(tmp_path / "s", sendmail_that_fails_first)
    assert report.error == f"injecting the shadow of {ids[0]} failed: sendmail failed"
    # Those already under way finish, and are reported; the others wait for the next try.
    assert len(begun) <= 2 * INJECT_AT_ONCE
    assert report.imported == [i for i in ids if i in begun and i != ids[0]]


def test_a_failed_injection_leaves_its_segment_and_the_next_try_takes_only_the_rest(tmp_path):
    three = ["4ZfirstAAAA", "4ZfailsAAAA", "4ZthirdAAAA"]
    store = ShadowStore(tmp_path / "s", 1 << 20)
    for queue_id in three:
        store.put(envelope(queue_id), b"m")
    [name] = segments(tmp_path / "s")
    delivered: list[tuple[str, list[str], bytes]] = []
    inject = inject_into(delivered)

    def sendmail_down_for_one(envelope: Envelope, message: bytes) -> None:
        if envelope.queue_id == "4ZfailsAAAA":
            raise OSError("sendmail failed: postdrop: warning: unable to look up public/pickup")
        inject(envelope, message)

    first = take_over(tmp_path / "s", sendmail_down_for_one)
    assert "4ZfailsAAAA failed: sendmail failed" in first.error
    assert "4ZfirstAAAA" in first.imported and "4ZfailsAAAA" not in first.imported
    assert segments(tmp_path / "s") == [name]  # nothing it held is lost
    # The agent counts what the first try injected as covered: nothing goes in twice.
    again = import_shadows(
        tmp_path / "s", set(first.imported), None, frozenset({"ex.example"}), 1 << 20, inject
    )
    assert not again.error
    assert sorted(first.imported + again.imported) == sorted(three)
    assert len(delivered) == 3
    assert segments(tmp_path / "s") == []


def test_what_went_in_is_written_down_before_its_segment_goes(tmp_path):
    ids = shadows_of(tmp_path / "s", "down", 3)
    written: list[list[str]] = []

    def write_down(queue_ids: list[str]) -> None:
        assert segments(tmp_path / "s")  # the segment is still there
        written.append(queue_ids)

    report = import_shadows(
        tmp_path / "s", set(), None, frozenset({"ex.example"}), 1 << 20,
        inject_into([]), write_down,
    )  # fmt: skip
    assert written == [ids] and report.imported == ids
    assert segments(tmp_path / "s") == []


def test_a_journal_that_cannot_be_written_stops_the_import_and_keeps_the_segment(tmp_path):
    ids = shadows_of(tmp_path / "s", "full", 3)

    def disk_full(queue_ids: list[str]) -> None:
        raise OSError(28, "No space left on device")

    report = import_shadows(
        tmp_path / "s", set(), None, frozenset({"ex.example"}), 1 << 20,
        inject_into([]), disk_full,
    )  # fmt: skip
    # In the queue, so in the answer: the promotion records them all the same.
    assert report.imported == ids
    assert report.error.startswith("cannot write down what went in: ")
    assert len(segments(tmp_path / "s")) == 1


def test_the_import_refuses_a_forbidden_sender_and_keeps_its_segment_aside(tmp_path):
    store = ShadowStore(tmp_path / "s", 1 << 20)
    store.put(envelope("4ZallowedAA"), b"fine")
    store.put(envelope("4ZforbidAAA", sender="evil@forbidden.example"), b"evil")
    store.put(envelope("4ZbigAAAAAA"), b"x" * 5000)
    [name] = segments(tmp_path / "s")
    delivered: list[tuple[str, list[str], bytes]] = []
    report = import_shadows(
        tmp_path / "s", set(), None, frozenset({"ex.example"}), 4096, inject_into(delivered)
    )
    assert report.imported == ["4ZallowedAA"]
    reasons = {r["path"]: r["reason"] for r in report.refused}
    assert "forbidden.example" in reasons[f"shadow/{name}/4ZforbidAAA"]
    assert "larger than 4096" in reasons[f"shadow/{name}"]
    assert segments(tmp_path / "s") == [f"refused-{name}"]
    # A later promotion does not read it again: nothing is delivered twice.
    again = import_shadows(
        tmp_path / "s", set(), None, frozenset({"ex.example"}), 4096, inject_into(delivered)
    )
    assert again.imported == [] and len(delivered) == 1


def test_the_import_follows_no_link_and_reads_no_file_it_does_not_own(tmp_path):
    root = tmp_path / "s"
    store = ShadowStore(root, 1 << 20)
    outside = tmp_path / "outside"
    outside.write_bytes(shadow_store.encode(envelope("4ZsecretAAA"), b"secret"))
    link = root / "segment-00000000000000000001-0000abcd"
    link.symlink_to(outside)
    (root / "4ZnotAsegmt").write_bytes(b"x")
    store.put(envelope("4ZfineAAAAA"), b"fine")
    delivered: list[tuple[str, list[str], bytes]] = []
    report = take_over(root, inject_into(delivered))
    reasons = {r["path"]: r["reason"] for r in report.refused}
    assert "following links" in reasons[f"shadow/{link.name}"]
    assert "not a shadow segment" in reasons["shadow/4ZnotAsegmt"]
    assert report.imported == ["4ZfineAAAAA"]
    assert link.is_symlink() and outside.exists()


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


async def test_many_messages_in_flight_are_all_stored_over_persistent_connections(peer):
    port, pin, store = peer
    client = ShadowClient("127.0.0.1", port, pin, TOKEN, 5.0)
    ids = [f"4Zmany{n:05d}" for n in range(20)]
    await asyncio.gather(*(client.send(envelope(i), b"m") for i in ids))
    assert stored_ids(store.root) == ids
    pooled = len(client.idle)
    assert 0 < pooled <= 20
    await client.send(envelope("4ZreusedAAA"), b"m")  # over a pooled connection
    assert "4ZreusedAAA" in stored_ids(store.root)
    assert len(client.idle) == pooled
    client.close()


async def test_a_receiver_pinned_by_its_public_key_gets_the_copy(peer, tmp_path):
    port, _pin, store = peer
    by_key = shadow_store_pin(tmp_path / "n.crt")
    client = ShadowClient("127.0.0.1", port, by_key, TOKEN, 5.0)
    await client.send(envelope("4ZbyKeyAAAAA"), b"m")
    assert stored_ids(store.root) == ["4ZbyKeyAAAAA"]
    client.close()


def shadow_store_pin(cert: Path) -> bytes:
    """The pin of a certificate's public key, as `mailrelay serve` prints it."""
    return parse_fingerprint(key_fingerprint(cert), "PEER_CERT_FINGERPRINT")


async def test_a_receiver_with_another_certificate_never_gets_the_token(peer):
    port, _pin, store = peer
    client = ShadowClient("127.0.0.1", port, b"\0" * 32, TOKEN, 5.0)
    with pytest.raises(ShadowUnavailable, match="not the pinned"):
        await client.send(envelope(), b"m")
    # A handshake bound to fail is not made again for every message.
    with pytest.raises(ShadowUnavailable, match=r"not tried again yet, .*not the pinned"):
        await client.send(envelope(), b"m")
    assert not any(store.root.iterdir())


async def test_a_sender_with_the_wrong_token_stores_nothing(peer):
    port, pin, store = peer
    client = ShadowClient("127.0.0.1", port, pin, "w" * 40, 5.0)
    with pytest.raises(ShadowUnavailable, match="SHADOW_TOKEN"):
        await client.send(envelope(), b"m")
    assert not any(store.root.iterdir())


async def test_a_full_peer_store_is_no_copy(peer):
    port, pin, store = peer
    client = ShadowClient("127.0.0.1", port, pin, TOKEN, 5.0)
    with pytest.raises(ShadowUnavailable, match="FULL"):
        await client.send(envelope(), b"x" * 8100)
    assert not any(store.root.iterdir())


async def test_a_peer_that_is_down_is_reported_within_the_deadline(tmp_path):
    client = ShadowClient("127.0.0.1", 9, b"\0" * 32, TOKEN, 0.5)
    started = time.monotonic()
    with pytest.raises(ShadowUnavailable):
        await client.send(envelope(), b"m")
    assert time.monotonic() - started < 1.0


def milter_message(recipients: list[str], **macros: str) -> Message:
    return Message(
        sender="app@allowed.example",
        recipients=recipients,
        macros={f"{{{k}}}": v for k, v in macros.items()},
    )


def test_the_first_hop_is_written_as_postfix_lays_out_its_received_header():
    when = 1_765_000_000.0  # 2025-12-06 05:46:40 UTC
    message = milter_message(
        ["b@dest.example"], i="4ZabcDEF123", j="relay-a.example",
        client_addr="198.51.100.7", client_name="app1.example",
    )  # fmt: skip
    header = first_hop(message, when).decode()
    assert header == (
        "Received: from [198.51.100.7] (app1.example [198.51.100.7])\r\n"
        "\tby relay-a.example (Postfix; as its shadow copy recorded it) id 4ZabcDEF123\r\n"
        f"\tfor <b@dest.example>; {formatdate(when, localtime=True)}\r\n"
    )
    assert email.message_from_string(header + "\r\nbody")["Received"]


def test_the_first_hop_of_tls_ipv6_and_many_recipients():
    message = milter_message(
        ["a@x.example", "b@x.example"], i="4Z1", j="relay-a.example",
        client_addr="2001:db8::7", client_name="unknown", tls_version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384", cipher_bits="256",
    )  # fmt: skip
    lines = first_hop(message, 0.0).decode().split("\r\n")
    assert lines[:3] == [
        "Received: from [IPv6:2001:db8::7] (unknown [IPv6:2001:db8::7])",
        "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256 bits))",
        "\tby relay-a.example (Postfix; as its shadow copy recorded it) with ESMTPS id 4Z1;",
    ]
    assert "for <" not in lines[3]  # as Postfix: a recipient is named only when it is the one


def test_the_first_hop_names_this_host_when_postfix_sends_no_j():
    message = milter_message(["b@x.example"], i="4Z1", client_addr="198.51.100.7")
    lines = first_hop(message, 0.0).decode().split("\r\n")
    assert lines[1].startswith(f"\tby {socket.gethostname()} (Postfix;")


def test_a_name_from_dns_cannot_add_a_header_of_its_own():
    message = milter_message(
        ["b@x.example"], client_name="evil\r\nBcc: victim@x.example", client_addr="198.51.100.7"
    )
    header = first_hop(message, 0.0)
    assert header.count(b"\n") == 3 and b"Bcc" in header.split(b"\r\n")[0]


def test_shadow_mode_off_configures_no_milter():
    from app.agent.postfix import shadow_settings
    from app.settings import load_agent_settings

    def milter(env: dict[str, str]) -> dict[str, str]:
        return shadow_settings(load_agent_settings(env))

    assert milter({"SHADOW_MODE": "off"}) == {"smtpd_milters": ""}
    assert milter({"SHADOW_MODE": "require"})["milter_default_action"] == "tempfail"
    assert milter({})["milter_default_action"] == "accept"


def test_the_unprotected_count_is_written_at_once_then_at_most_once_a_second(tmp_path):
    """With the peer down every message is unprotected: the first count is on disk at once,
    a burst after it within FLUSH_SECONDS, and the file is always a whole count."""
    path = tmp_path / "counters.json"
    counters = Counters(path)
    counters.unprotected("the peer is down")
    assert read_counters(path)["unprotected_total"] == 1
    writes = []
    synced: list[int] = []
    real_replace, real_fsync = os.replace, os.fsync

    def counting_replace(src: Any, dst: Any) -> None:
        writes.append(read_counters(Path(src))["unprotected_total"])
        real_replace(src, dst)

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", counting_replace)
        patch.setattr(os, "fsync", counting_fsync)
        for _ in range(500):
            counters.unprotected("the peer is down")
            assert read_counters(path)["unprotected_total"] >= 1
        time.sleep(FLUSH_SECONDS + 0.5)
    assert writes == [501]  # one write for the burst, with all of it
    assert len(synced) == 2  # the new file before its rename, the directory after it
    assert read_counters(path)["unprotected_total"] == 501
    assert Counters(path).data["unprotected_total"] == 501  # a restart counts on from there


def test_a_pending_count_is_written_when_the_milter_stops(tmp_path):
    path = tmp_path / "counters.json"
    counters = Counters(path)
    counters.unprotected("first")
    counters.unprotected("second, within the second")
    assert read_counters(path)["unprotected_total"] == 1
    counters.flush()  # what atexit runs
    assert read_counters(path)["unprotected_total"] == 2


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


def test_every_put_returns_only_after_an_fdatasync_that_began_after_its_write(
    tmp_path, monkeypatch
):
    """Concurrent puts share fdatasyncs (group commit), but none returns before one that
    started after its own write has finished: that is what makes it durable. The segment's
    name is fsync'ed in its directory before anything in it is acknowledged."""
    store = ShadowStore(tmp_path / "s", 1 << 20)
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    class RecordingOs:
        """The os module as the store sees it, with its writes and syncs recorded."""

        def __getattr__(self, name: str):
            return getattr(os, name)

        def write(self, fd, data):
            written = os.write(fd, data)
            with lock:
                events.append(("written", bytes(data).split(b'"queue_id": "')[1][:11].decode()))
            return written

        def fdatasync(self, fd):
            with lock:
                events.append(("sync-start", ""))
            time.sleep(0.005)  # a disk's flush: lets writes of other threads pile up meanwhile
            os.fdatasync(fd)
            with lock:
                events.append(("sync-end", ""))

    real_fsync_directory = shadow_store.fsync_directory

    def fsync_directory(path):
        real_fsync_directory(path)
        with lock:
            events.append(("directory", ""))

    monkeypatch.setattr(shadow_store, "os", RecordingOs())
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
    first_return = min(events.index(("returned", i)) for i in ids)
    assert ("directory", "") in events[:first_return]
    for queue_id in ids:
        written = events.index(("written", queue_id))
        returned = events.index(("returned", queue_id))
        starts = [i for i, e in enumerate(events) if e[0] == "sync-start" and i > written]
        assert starts, f"{queue_id} returned without an fdatasync after its write"
        end = next(i for i, e in enumerate(events) if e[0] == "sync-end" and i > starts[0])
        assert end < returned, f"{queue_id} returned before its fdatasync ended"
    syncs = sum(1 for e in events if e[0] == "sync-start")
    assert syncs < len(ids)  # they were shared
    assert stored_ids(store.root) == ids


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
    # A time no float holds, and JSON nested deeper than the parser goes: answered, not a
    # thread that dies with its exception.
    huge = b'{"queue_id": "4ZhugeAAAA", "sender": "", "recipients": ["b@x"], "time": 1'
    huge += b"0" * 400 + b', "size": 1}'
    assert exchange(struct.pack(">I", len(huge)) + huge + b"m").startswith(b"NO the time is")
    deep = b"[" * 100_000 + b"]" * 100_000
    assert exchange(struct.pack(">I", len(deep)) + deep).startswith(b"NO ")
    assert not any(store.root.iterdir())


def test_a_client_that_does_not_show_its_token_in_time_is_cut_off(peer, monkeypatch):
    """HELLO_TIMEOUT is for the handshake and the token together: a byte now and then, each
    within the timeout of one read, keeps no slot for longer."""
    monkeypatch.setattr("app.replication.shadow_receiver.HELLO_TIMEOUT", 0.6)
    port, _pin, _store = peer
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw) as sock:
        started = time.monotonic()
        with pytest.raises(OSError):
            for byte in b"HELLO" * 10:
                sock.sendall(bytes([byte]))
                time.sleep(0.2)  # a third of the timeout
        assert time.monotonic() - started < 3


async def test_only_the_peers_address_may_connect(tmp_path):
    cert, key = tmp_path / "n.crt", tmp_path / "n.key"
    _self_signed(cert, key, "peer.test")
    pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).digest()
    store = ShadowStore(tmp_path / "store", 8192)
    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    receiver = Receiver(store, TOKEN, 8192, None)
    threading.Thread(
        target=serve,
        args=(receiver, listener, server_context(cert, key), False, "127.0.0.2"),
        daemon=True,
    ).start()
    try:
        stranger = ShadowClient("127.0.0.1", port, pin, TOKEN, 2.0, source="127.0.0.3")
        with pytest.raises(ShadowUnavailable):
            await stranger.send(envelope("4ZstrangerAA"), b"m")
        the_peer = ShadowClient("127.0.0.1", port, pin, TOKEN, 2.0, source="127.0.0.2")
        await the_peer.send(envelope("4ZthePeerAAA"), b"m")
        assert stored_ids(store.root) == ["4ZthePeerAAA"]
        stranger.close()
        the_peer.close()
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()


async def test_a_peer_that_did_not_answer_is_not_tried_again_for_each_message(monkeypatch):
    """A crashed peer answers nothing: without a pause every message would wait the whole
    SHADOW_TIMEOUT_MS. The next ones fail at once, one after the pause tries again."""
    monkeypatch.setattr("app.replication.shadow_client.PEER_DOWN_PAUSE", 0.3)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never finishes a handshake
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
        with pytest.raises(ShadowUnavailable, match="SHADOW_TIMEOUT_MS"):
            await client.send(envelope(), b"m")
        tried = len(accepted)
        with pytest.raises(ShadowUnavailable, match="not tried again yet"):
            await client.send(envelope(), b"m")
        assert len(accepted) == tried
        await asyncio.sleep(0.35)
        with pytest.raises(ShadowUnavailable, match="SHADOW_TIMEOUT_MS"):
            await client.send(envelope(), b"m")
        assert len(accepted) > tried
    finally:
        silent.close()
        for conn in accepted:
            conn.close()


async def test_a_peer_that_answers_no_syn_is_given_up_long_before_shadow_timeout_ms():
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
            await client.send(envelope(), b"m")
        assert time.monotonic() - started < 2.0
    finally:
        for sock in (*fillers, full):
            sock.close()
