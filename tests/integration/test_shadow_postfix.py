"""Shadow copies with the real Postfix (tests/postfixhost.py), the real milter and the real
shadow receiver over TLS: the 250 waits for the peer's durable copy, SHADOW_MODE decides what
happens without one, and promotion injects the uncovered shadows as untrusted input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from app.agent import queuesync
from app.replication import sync_mark
from app.replication.shadow_store import Envelope, encode, is_segment, records
from tests import postfixhost
from tests.integration.test_replica_import import deferred_files, to_replica
from tests.postfixhost import ALLOWED, CLIENT, RELAY, new_takeover
from tests.smtptarget import received

pytestmark = pytest.mark.postfix


@pytest.fixture(scope="module")
def relay():
    yield from postfixhost.started()


@pytest.fixture
async def agent(relay):
    shutil.rmtree(relay.shadow_store, ignore_errors=True)
    relay.shadow_counters.unlink(missing_ok=True)
    return await postfixhost.apply_one_route(relay)


def send(relay, message_id: str, to: str = "someone@dest.example") -> str:
    return relay.swaks(
        f"app@{ALLOWED}",
        to,
        CLIENT,
        "--header",
        f"Message-Id: <{message_id}>",
    )


def queue_id_of(output: str) -> str:
    line = next(li for li in output.splitlines() if "250 2.0.0 Ok: queued as" in li)
    return line.rsplit(" ", 1)[1]


def segment_name(n: int) -> str:
    return f"segment-{n:020d}-0000abcd"


def shadows(store) -> dict[str, tuple[Envelope, bytes, float]]:
    """Each shadow in the store: its envelope, message and its segment's mtime."""
    found = {}
    for path in sorted(store.iterdir()):
        if not is_segment(path.name):
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            for record in records(fd, 1 << 30):
                assert record.envelope and record.message is not None, record.problem
                found[record.envelope.queue_id] = (
                    record.envelope,
                    record.message,
                    os.fstat(fd).st_mtime,
                )
        finally:
            os.close(fd)
    return found


def wait_for_sink(relay, message_id: str, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [m for m in received(relay.sink1) if message_id in m["message_id"]]
        if got:
            return got
        time.sleep(0.2)
    return []


async def test_the_250_comes_only_after_the_peer_stored_the_shadow(relay, agent):
    relay.start_shadow("receiver")
    relay.start_shadow("milter", "prefer", timeout_ms=8000)
    receiver = relay.shadow_processes["receiver"]
    os.killpg(receiver.pid, signal.SIGSTOP)  # the peer holds the copy back
    result: dict[str, str] = {}
    client = threading.Thread(target=lambda: result.update(out=send(relay, "held@test")))
    client.start()
    time.sleep(2)
    assert client.is_alive(), "the client got its answer while the peer held the copy"
    assert not any(relay.shadow_store.iterdir())
    released_at = time.time()
    os.killpg(receiver.pid, signal.SIGCONT)
    client.join(30)
    queue_id = queue_id_of(result["out"])
    envelope, message, written_at = shadows(relay.shadow_store)[queue_id]
    assert written_at >= released_at - 0.01
    assert envelope.sender == f"app@{ALLOWED}"
    assert envelope.recipients == ["someone@dest.example"]
    assert envelope.client_address == CLIENT
    assert b"Message-Id: <held@test>" in message


async def test_prefer_accepts_without_a_peer_and_counts_the_mail_unprotected(relay, agent):
    relay.start_shadow("milter", "prefer", timeout_ms=1000)
    relay.stop_shadow("receiver")
    out = send(relay, "unprotected@test")
    assert "250 2.0.0 Ok: queued as" in out, out
    counters = json.loads(relay.shadow_counters.read_text())
    assert counters["unprotected_total"] == 1
    status = await agent.status()
    assert status["shadow"]["unprotected_total"] == 1


async def test_require_answers_451_when_no_copy_can_be_made(relay, agent):
    relay.stop_shadow("receiver")
    relay.start_shadow("milter", "require", timeout_ms=1000)
    try:
        out = send(relay, "refused@test")
        assert "451 4.4.0" in out, out
        assert "queued as" not in out
    finally:
        relay.start_shadow("milter", "prefer")


async def test_promotion_injects_an_uncovered_shadow_with_its_envelope(relay, agent):
    relay.start_shadow("receiver")
    relay.start_shadow("milter", "prefer")
    queue_id = queue_id_of(send(relay, "promoted@test", "someone@dest.example,other@dest.example"))
    assert wait_for_sink(relay, "promoted@test")  # this node delivered it as usual
    for item in relay.sink1.iterdir():
        item.unlink()
    relay.stop_shadow("receiver")  # the peer's store, as this node finds it on promotion
    report = await agent.import_replica(new_takeover())
    assert report["shadows"]["imported"] == [queue_id]
    [again] = wait_for_sink(relay, "promoted@test")
    assert again["mail_from"] == f"app@{ALLOWED}"
    assert sorted(again["rcpt_tos"]) == ["other@dest.example", "someone@dest.example"]
    assert queue_id not in shadows(relay.shadow_store)


# What a client may hand in that a copy must keep byte for byte: a folded header, one without
# a space after its colon, 8-bit text, lines that start with a dot, a line of 1,500 characters,
# a carriage return inside a line, and no line break at the end.
AWKWARD = (
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= folded\r\n continued\r\n\tand again\r\n"
    b"X-No-Space:value\r\nX-Empty:\r\nX-Umlaut: Gr\xc3\xbc\xc3\x9fe\r\n"
    b"Message-Id: <awkward@test>\r\n\r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\n.one dot\r\n..two dots\r\n"
    + b"x" * 1500
    + b"\r\ncarriage\rreturn\r\n\r\n\r\nno line break at the end"
)


def split_trace(raw: bytes) -> tuple[list[str], bytes]:
    """The Received: headers on top of a delivered message (unfolded), and all after them."""
    lines = raw.split(b"\n")
    received: list[str] = []
    while lines and (lines[0].startswith(b"Received:") or lines[0][:1] in (b" ", b"\t")):
        line = lines.pop(0).rstrip(b"\r").decode()
        if line.startswith("Received:"):
            received.append(line)
        else:
            received[-1] += " " + line.strip()
    return received, b"\n".join(lines)


async def test_a_taken_over_message_keeps_its_bytes_and_its_first_hop(relay, agent):
    relay.start_shadow("receiver")
    relay.start_shadow("milter", "prefer")
    data = relay.base / "awkward.eml"
    data.write_bytes(AWKWARD)
    out = relay.swaks(
        f"app@{ALLOWED}", "someone@dest.example", CLIENT,
        "--ehlo", "app1.internal", "--tls", "--data", f"@{data}",
    )  # fmt: skip
    queue_id = queue_id_of(out)
    assert wait_for_sink(relay, "awkward@test")
    [first] = relay.sink1.glob("*.eml")
    as_delivered = first.read_bytes()
    for item in relay.sink1.iterdir():
        item.unlink()
    relay.stop_shadow("receiver")
    assert (await agent.import_replica(new_takeover()))["shadows"]["imported"] == [queue_id]
    assert wait_for_sink(relay, "awkward@test")
    [again] = relay.sink1.glob("*.eml")
    [postfix_hop], content = split_trace(as_delivered)
    [takeover_hop, shadow_hop], content_again = split_trace(again.read_bytes())
    assert content_again == content  # the message as the client sent it, byte for byte
    assert "(Postfix, from userid" in takeover_hop  # the injection on this node
    # The first hop as this node's Postfix wrote it, but for what no macro tells (the HELO
    # name, the TLS key exchange, the client certificate line) and a comment that names the
    # shadow copy.
    client = f"(unknown [{CLIENT}]) (using TLSv1.3 with cipher "
    assert postfix_hop.startswith(f"Received: from app1.internal {client}")
    assert shadow_hop.startswith(f"Received: from [{CLIENT}] {client}")
    cipher = postfix_hop.split(" with cipher ")[1].split()[0]
    assert f"with cipher {cipher} (" in shadow_hop
    for part in (" with ESMTPS id " + queue_id, "for <someone@dest.example>;"):
        assert part in postfix_hop and part in shadow_hop
    assert " by relay.test (Postfix; as its shadow copy recorded it) with ESMTPS " in shadow_hop


# A client that asks for DSN and declares its body, recipient by recipient (swaks cannot).
DSN_CLIENT = f"""
import smtplib
smtp = smtplib.SMTP("{RELAY}", 25, source_address=("{CLIENT}", 0))
smtp.ehlo("app1.internal")
smtp.mail("app@{ALLOWED}", ["RET=HDRS", "ENVID=batch+2B42", "BODY=8BITMIME"])
smtp.rcpt("never@dest.example", ["NOTIFY=NEVER"])
smtp.rcpt("default@dest.example")
smtp.rcpt("success@dest.example", ["NOTIFY=SUCCESS,FAILURE"])
code, reply = smtp.data(b"Message-Id: <dsn@test>\\r\\n\\r\\nGr\\xc3\\xbc\\xc3\\x9fe\\r\\n")
print(code, reply.decode())
"""


def dsn_records(relay, queue_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """What a queue file holds of the client's requests: for the message (ENVID, RET, body
    encoding) and each recipient's NOTIFY flags (postcat's records)."""
    message: dict[str, str] = {}
    per_recipient: dict[str, str] = {}
    notify = ""
    for line in relay.exec("postcat", "-e", "-q", queue_id).stdout.splitlines():
        key, _, value = line.partition(": ")
        name, _, attribute = value.partition("=")
        if key == "named_attribute" and name in ("envelope_id", "ret_flags", "encoding"):
            message[name] = attribute
        elif key == "named_attribute" and name == "notify_flags":
            notify = attribute
        elif key == "recipient":
            per_recipient[value], notify = notify, ""
    return message, per_recipient


async def taken_over(relay, agent, client: str) -> tuple[str, list[dict]]:
    """The queue ID `client` (a Python script) got its 250 under, and the queue's entries
    after the shadow was taken over. Sink 1 is down: both the original and the takeover's
    copies stay in the queue, where their records can be read."""
    relay.start_shadow("receiver")
    relay.start_shadow("milter", "prefer")
    relay.stop_sink(1)
    sent = subprocess.run(
        relay.net(sys.executable, "-c", client), capture_output=True, text=True, timeout=60
    )
    assert sent.stdout.startswith("250 "), sent.stdout + sent.stderr
    original = sent.stdout.split()[-1]
    relay.stop_shadow("receiver")
    assert (await agent.import_replica(new_takeover()))["shadows"]["imported"] == [original]
    lines = relay.exec("postqueue", "-j").stdout.splitlines()
    return original, [json.loads(line) for line in lines]


async def test_a_taken_over_message_keeps_the_clients_dsn_and_body_requests(relay, agent):
    try:
        original, queued = await taken_over(relay, agent, DSN_CLIENT)
        taken_over_ids = sorted({q["queue_id"] for q in queued} - {original})
        message, per_recipient = dsn_records(relay, original)
        assert message == {"envelope_id": "batch+42", "ret_flags": "2", "encoding": "8bit"}
        assert per_recipient == {
            "never@dest.example": "1", "default@dest.example": "", "success@dest.example": "6",
        }  # fmt: skip
        # One submission per distinct NOTIFY (sendmail takes one for all its recipients).
        assert len(taken_over_ids) == 3
        again: dict[str, str] = {}
        for queue_id in taken_over_ids:
            copy_message, copy_recipients = dsn_records(relay, queue_id)
            assert copy_message == message
            again |= copy_recipients
        assert again == per_recipient
    finally:
        relay.exec("postsuper", "-d", "ALL")
        relay.start_sink(1)


# A client of internationalised mail with an ENVID of two characters, which Postfix's sendmail
# would take for its old VERP option.
UTF8_CLIENT = f"""
import smtplib
smtp = smtplib.SMTP("{RELAY}", 25, source_address=("{CLIENT}", 0))
smtp.ehlo("app1.internal")
smtp.mail("app@{ALLOWED}", ["SMTPUTF8", "ENVID=QQ", "BODY=8BITMIME"])
smtp.rcpt("j\u00fcrgen@dest.example")
code, reply = smtp.data("Subject: Gr\u00fc\u00dfe\\r\\n\\r\\nhi\\r\\n".encode())
print(code, reply.decode())
"""


async def test_an_smtputf8_message_with_a_short_envid_is_taken_over_as_sent(relay, agent):
    try:
        original, queued = await taken_over(relay, agent, UTF8_CLIENT)
        [copy] = [q for q in queued if q["queue_id"] != original]
        assert copy["sender"] == f"app@{ALLOWED}"
        assert [r["address"] for r in copy["recipients"]] == ["j\u00fcrgen@dest.example"]
        message, _ = dsn_records(relay, copy["queue_id"])
        assert "envelope_id" not in message  # not kept, rather than read as VERP
    finally:
        relay.exec("postsuper", "-d", "ALL")
        relay.start_sink(1)


async def test_only_a_replica_file_the_import_takes_covers_a_shadow(relay, agent):
    # A complete queue file in the replica brings its message: its shadow is dropped.
    shutil.rmtree(relay.replica, ignore_errors=True)
    queued = deferred_files(relay, [f"app@{ALLOWED}"])[f"app@{ALLOWED}"]
    covered = to_replica(relay, queued).name
    # Mail in flight when the sync froze the queue (cleanup keeps its file 0600 until it is
    # complete), and a file rsync had not yet moved out of its staging directory when the
    # node died: the import skips both, so their shadows are the messages' only copies.
    in_flight, staged = "4ZinFlightAAA1", "4ZstagedAAAAA1"
    for where, queue_id, mode in (
        ("incoming/A", in_flight, 0o600),
        ("incoming/.~tmp~", staged, 0o700),
    ):
        (relay.replica / where).mkdir(parents=True, exist_ok=True)
        (relay.replica / where / queue_id).write_bytes(b"not complete")
        (relay.replica / where / queue_id).chmod(mode)
    relay.shadow_store.mkdir(exist_ok=True)
    segment = relay.shadow_store / segment_name(1)
    for queue_id in (covered, in_flight, staged):
        envelope = Envelope(queue_id, f"app@{ALLOWED}", ["x@dest.example"], CLIENT, time.time())
        with segment.open("ab") as out:
            out.write(encode(envelope, f"Subject: {queue_id}\r\n\r\nhi\r\n".encode()))
    try:
        report = await agent.import_replica(new_takeover())
    finally:
        shutil.rmtree(relay.replica, ignore_errors=True)
        relay.exec("postsuper", "-d", "ALL")
    assert report["imported"] == [covered]
    assert report["shadows"]["imported"] == sorted([in_flight, staged])
    assert not segment.exists()


async def test_hostile_shadows_are_refused_and_left(relay, agent, tmp_path):
    store = relay.shadow_store
    store.mkdir(exist_ok=True)
    outside = relay.base / "outside-secret"
    outside.write_bytes(
        encode(
            Envelope("4ZsecretABC", f"app@{ALLOWED}", ["x@dest.example"], CLIENT, 1.0),
            b"Message-Id: <secret@test>\r\n\r\nsecret\r\n",
        )
    )
    link = store / segment_name(2)
    link.symlink_to(outside)
    forbidden = Envelope("4ZforbidABC", "evil@forbidden.example", ["x@dest.example"], CLIENT, 1.0)
    big = Envelope("4ZbigABC1234", f"app@{ALLOWED}", ["x@dest.example"], CLIENT, 1.0)
    planted = store / segment_name(3)
    planted.write_bytes(
        encode(forbidden, b"Message-Id: <evil@test>\r\n\r\nx\r\n")
        + encode(big, b"Message-Id: <big@test>\r\n\r\n" + b"x" * (15 << 20))
    )
    report = (await agent.import_replica(new_takeover()))["shadows"]
    reasons = {r["path"]: r["reason"] for r in report["refused"]}
    assert report["imported"] == []
    assert "following links" in reasons[f"shadow/{link.name}"]
    assert "forbidden.example" in reasons[f"shadow/{planted.name}/4ZforbidABC"]
    assert "larger than" in reasons[f"shadow/{planted.name}"]
    assert link.is_symlink() and outside.exists()
    assert (store / f"refused-{planted.name}").exists()  # kept for the operator
    time.sleep(2)
    assert not [m for m in received(relay.sink1) if "@test" in m["message_id"]]


async def test_a_restarted_agent_queues_nothing_again_that_a_failed_try_took(relay, agent):
    """The first try takes the replica and stops at a shadow sendmail cannot take (larger than
    message_size_limit); the agent restarts, so nothing it kept in memory is left. The try that
    finishes takes only the rest, and names what the first took for the promotion to record."""
    shutil.rmtree(relay.replica, ignore_errors=True)
    queued = deferred_files(relay, [f"app@{ALLOWED}"])[f"app@{ALLOWED}"]
    in_replica = to_replica(relay, queued).name
    relay.shadow_store.mkdir(exist_ok=True)
    segment = relay.shadow_store / segment_name(1)
    small, too_big, third = "4ZsmallAAAA1", "4ZtooBigAAA1", "4ZthirdAAAA1"
    bodies = {in_replica: b"hi", small: b"hi", too_big: b"x" * (11 << 20), third: b"hi"}
    with segment.open("ab") as out:
        for queue_id, body in bodies.items():
            envelope = Envelope(queue_id, f"app@{ALLOWED}", ["x@dest.example"], CLIENT, time.time())
            out.write(encode(envelope, f"Message-Id: <{queue_id}@again>\r\n\r\n".encode() + body))
    takeover = new_takeover()
    try:
        first = await agent.import_replica(takeover)
        assert f"injecting the shadow of {too_big} failed" in first["error"]
        assert first["imported"] == [in_replica]
        assert small in first["shadows"]["imported"]
        relay.restart_agent()
        relay.exec("postconf", "-e", "message_size_limit=0")
        relay.exec("postfix", "reload")
        second = await agent.import_replica(takeover)
    finally:
        relay.exec("postconf", "-X", "message_size_limit")
        relay.exec("postfix", "reload")
    assert "error" not in second
    assert second["earlier"] == sorted([in_replica, *first["shadows"]["imported"]])
    assert second["imported"] == []
    assert too_big in second["shadows"]["imported"]
    took = first["imported"] + first["shadows"]["imported"] + second["shadows"]["imported"]
    assert sorted(took) == sorted([in_replica, small, too_big, third])
    assert not segment.exists()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(received(relay.sink1)) < 4:
            time.sleep(0.2)
        time.sleep(2)  # a second copy, if one was queued, comes as fast as the first
        delivered = sorted(m["message_id"] for m in received(relay.sink1))
    finally:
        relay.exec("postsuper", "-d", "ALL")
    assert delivered == sorted(
        [f"<app@{ALLOWED}>", *(f"<{q}@again>" for q in (small, too_big, third))]
    )


def postfix_pids(relay) -> list[int]:
    master = int((relay.base / "spool" / "pid" / "master.pid").read_text().split()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(master)], capture_output=True, text=True, check=False
    ).stdout.split()
    return [master, *map(int, children)]


def snapshot_of(relay, tmp_path) -> sync_mark.Coverage:
    """The agent's snapshot of the relay's queue with its mark, put where the receiver reads it
    (as a completed ship puts it). Postfix is not frozen here: the stalled cleanup holds still
    by itself, and the freeze is the lab's (tests/lab)."""
    config = queuesync.SyncConfig(
        peer="198.18.0.12",
        ssh_key=tmp_path / "unused",
        spool=relay.base / "spool",
        staging=tmp_path / "snapshot",
        marker=relay.replica / sync_mark.NAME,
    )
    queuesync.take_snapshot(config, queuesync.Freezer("none"), queuesync.SyncReport("freeze"))
    coverage = sync_mark.read(config.marker, 0.2)
    assert coverage is not None
    return coverage


@pytest.mark.parametrize("where", ["incoming", "hold"])
async def test_a_shadow_whose_queue_file_was_not_committed_in_the_snapshot_is_kept(
    relay, agent, tmp_path, where
):
    """A disk that stalls cleanup between the copy and its commit: strace holds cleanup's
    fchmod (the call that marks a queue file complete, 0600 -> 0700) for 6 s. The snapshot
    taken meanwhile holds the file uncommitted, which the takeover would skip; its mark names
    the file, and the receiver keeps the shadow although it is older than the mark by more
    than the copy's timeout (0.2 s) and PRUNE_SLACK_SECONDS. The next snapshot, after the
    commit, covers it: the shadow goes. With a HOLD rule cleanup moves the file to hold/
    before it commits it."""
    shutil.rmtree(relay.replica, ignore_errors=True)
    relay.replica.mkdir()
    if where == "hold":
        rules = relay.base / "etc" / "hold_checks"
        rules.write_text("/^Message-Id: <stall@test>/ HOLD kept for the test\n")
        relay.exec("postconf", "-e", "header_checks=regexp:/etc/postfix/hold_checks")
        relay.exec("postfix", "reload")
    relay.start_shadow("receiver")
    relay.start_shadow("milter", "prefer", timeout_ms=200)
    stall = ["-e", "trace=fchmod", "-e", "inject=fchmod:delay_enter=6s"]
    attach = [f"-p{pid}" for pid in postfix_pids(relay)]
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", *stall, *attach])
    result: dict[str, str] = {}
    try:
        time.sleep(1)  # strace attached
        client = threading.Thread(target=lambda: result.update(out=send(relay, "stall@test")))
        client.start()
        deadline = time.monotonic() + 5
        while not shadows(relay.shadow_store) and time.monotonic() < deadline:
            time.sleep(0.05)
        [(queue_id, (envelope, _message, _at))] = shadows(relay.shadow_store).items()
        assert envelope.boot == sync_mark.boot_id() and envelope.mono is not None
        [uncommitted] = (relay.base / "spool" / where).rglob(queue_id)
        assert uncommitted.stat().st_mode & 0o777 == 0o600
        time.sleep(1.5)  # older than the mark by more than 0.2 s + PRUNE_SLACK_SECONDS
        coverage = snapshot_of(relay, tmp_path)
        assert coverage.mark.pending == {queue_id}
        assert coverage.mark.began.wall - envelope.time > 0.2 + sync_mark.PRUNE_SLACK_SECONDS
        time.sleep(2.5)  # the receiver prunes once a second
        assert queue_id in shadows(relay.shadow_store)
        client.join(30)
        assert queue_id_of(result["out"]) == queue_id  # the commit came, and the 250
        assert where == "hold" or wait_for_sink(relay, "stall@test")
        coverage = snapshot_of(relay, tmp_path)
        assert coverage.mark.pending == frozenset()
        deadline = time.monotonic() + 10
        while shadows(relay.shadow_store) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert shadows(relay.shadow_store) == {}
    finally:
        tracer.terminate()
        tracer.wait(10)
        shutil.rmtree(relay.replica, ignore_errors=True)
        if where == "hold":
            relay.exec("postconf", "-X", "header_checks")
            relay.exec("postfix", "reload")
            relay.exec("postsuper", "-d", "ALL", "hold")
