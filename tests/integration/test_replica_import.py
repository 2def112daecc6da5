"""The promotion import treats the peer's queue copy as untrusted input, against a real Postfix
(tests/postfixhost.py) and its real agent: queue files are made by that Postfix, copied into the
replica as the peer's sync would leave them, and imported with the agent's `import_replica`.
The maps the agent applies are checked against the policy floors by the agent itself."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import time
from pathlib import Path

import pytest

from app.agent import replica as replica_import
from app.agent.client import AgentRefused
from app.agent.takeover_journal import TakeoverJournal
from app.postfix import render
from app.settings import SettingsError, load_agent_settings
from tests import postfixhost
from tests.postfixhost import ALLOWED, CLIENT, new_takeover
from tests.smtptarget import received

pytestmark = pytest.mark.postfix


@pytest.fixture(scope="module")
def relay():
    yield from postfixhost.started()


@pytest.fixture
async def agent(relay):
    relay.exec("postsuper", "-d", "ALL", check=False)
    shutil.rmtree(relay.replica, ignore_errors=True)
    relay.replica.mkdir(mode=0o700)
    return await postfixhost.apply_one_route(relay)


def queue(relay) -> list[dict]:
    out = relay.exec("postqueue", "-j").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def deferred_files(relay, senders: list[str]) -> dict[str, Path]:
    """Real queue files, one per sender, left deferred by the real Postfix: sink1 is down and
    senders outside the maps have no route. Local submission (sendmail), so that senders smtpd
    would refuse get a queue file too, as a compromised peer could write one."""
    relay.stop_sink(1)
    try:
        for sender in senders:
            relay.exec(
                "sh",
                "-c",
                f"printf 'Subject: import test\\nMessage-Id: <{sender}>\\n\\nhello\\n' "
                f"| sendmail -f {sender} someone@dest.example",
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            entries = queue(relay)
            by_sender = {e["sender"]: e for e in entries if e["queue_name"] == "deferred"}
            if set(senders) <= set(by_sender):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"not all deferred: {queue(relay)}")
    finally:
        relay.start_sink(1)
    spool = relay.base / "spool"
    return {
        sender: next((spool / "deferred").rglob(by_sender[sender]["queue_id"]))
        for sender in senders
    }


def to_replica(relay, source: Path, part: str = "deferred") -> Path:
    """The peer's copy of a queue file (as rsync -t leaves it), then gone from the live queue:
    it lives on the peer only."""
    target = relay.replica / part / source.parent.name / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    relay.exec("postsuper", "-d", source.name)
    return target


def wait_for_sink(relay, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(received(relay.sink1)) < count:
        time.sleep(0.2)
    return received(relay.sink1)


async def test_imported_mail_from_a_sender_domain_not_allowed_is_not_delivered(relay, agent):
    files = deferred_files(relay, [f"app@{ALLOWED}", "spam@blocked.example"])
    good = to_replica(relay, files[f"app@{ALLOWED}"])
    bad = to_replica(relay, files["spam@blocked.example"])

    report = await agent.import_replica(new_takeover())

    assert report["imported"] == [good.name]
    assert [r["path"] for r in report["refused"]] == [f"deferred/{bad.parent.name}/{bad.name}"]
    assert (
        "sender <spam@blocked.example> is not in an allowed sender domain"
        in (report["refused"][0]["reason"])
    )
    # The allowed one goes out by its route; the other never enters the live queue.
    assert [m["message_id"] for m in wait_for_sink(relay, 1)] == [f"<app@{ALLOWED}>"]
    assert [e for e in queue(relay) if e["sender"] == "spam@blocked.example"] == []
    # Refused means left where it was, for the operator; the imported copy is gone.
    assert bad.exists() and not good.exists()


async def test_a_symlink_in_the_replica_to_another_directory_leaves_that_directory_untouched(
    relay, agent
):
    # Another directory holding a real queue file of an allowed sender, and a file of its own.
    files = deferred_files(relay, [f"victim@{ALLOWED}"])
    victim = relay.base / "victim"
    shutil.rmtree(victim, ignore_errors=True)
    (victim / "F").mkdir(parents=True)
    shutil.copy2(files[f"victim@{ALLOWED}"], victim / "F" / files[f"victim@{ALLOWED}"].name)
    relay.exec("postsuper", "-d", "ALL")
    (victim / "precious1234").write_bytes(b"not mail")
    (victim / "precious1234").chmod(0o700)
    before = {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()}
    # The peer's replica: a queue part, a hash directory and a queue file, each a symlink.
    relay.replica.joinpath("deferred").symlink_to(victim)
    relay.replica.joinpath("active").mkdir()
    relay.replica.joinpath("active", "F").symlink_to(victim / "F")
    relay.replica.joinpath("hold").mkdir()
    relay.replica.joinpath("hold", "precious1234").symlink_to(victim / "precious1234")

    report = await agent.import_replica(new_takeover())

    assert report["imported"] == []
    assert {r["path"] for r in report["refused"]} == {"deferred", "active/F", "hold/precious1234"}
    assert {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before
    assert queue(relay) == []
    for link in ("deferred", "active/F", "hold/precious1234"):
        assert (relay.replica / link).is_symlink()


async def test_an_oversized_replica_file_is_refused_and_reported(relay, agent):
    limit = int(relay.exec("postconf", "-h", "message_size_limit").stdout)
    files = deferred_files(relay, [f"big@{ALLOWED}"])
    big = to_replica(relay, files[f"big@{ALLOWED}"])
    # A valid queue file, padded past the cap (message_size_limit plus 4 MiB of headroom).
    with open(big, "ab") as padded:
        padded.truncate(limit + 4 * 1024 * 1024 + 1)
    os.chmod(big, 0o700)

    report = await agent.import_replica(new_takeover())

    assert report["imported"] == []
    assert report["refused"] == [
        {
            "path": f"deferred/{big.parent.name}/{big.name}",
            "reason": f"larger than {limit + 4 * 1024 * 1024} bytes",
        }
    ]
    assert big.exists()
    assert queue(relay) == []


async def test_odd_files_in_the_replica_are_refused_and_a_good_one_still_comes_in(relay, agent):
    files = deferred_files(relay, [f"ok@{ALLOWED}"])
    good = to_replica(relay, files[f"ok@{ALLOWED}"])
    hold = relay.replica / "hold"
    hold.mkdir()
    os.mkfifo(hold / "fifo00000001", 0o700)  # a FIFO: opening it must not block the agent
    (hold / "notaqueuefile").write_bytes(b"\x00garbage")
    (hold / "notaqueuefile").chmod(0o700)
    os.link(good, hold / "hardlink0001")  # the second name of a file
    (relay.replica / "deferred" / "deep").mkdir()  # not a hash directory

    report = await agent.import_replica(new_takeover())

    reasons = {r["path"]: r["reason"] for r in report["refused"]}
    assert reasons["hold/fifo00000001"] == "not a regular file"
    assert reasons["hold/notaqueuefile"].startswith("not a queue file:")
    assert reasons["hold/hardlink0001"] == "has 2 hard links"
    assert reasons["deferred/deep"] == "not a queue hash directory"
    # The good file had two names too: refused, left in place. Once it has one, it comes in.
    assert report["imported"] == []
    (hold / "hardlink0001").unlink()
    assert (await agent.import_replica(new_takeover()))["imported"] == [good.name]
    assert [m["message_id"] for m in wait_for_sink(relay, 1)] == [f"<ok@{ALLOWED}>"]


async def test_an_import_that_stopped_half_way_is_finished_by_the_next(relay, agent):
    source = deferred_files(relay, [f"app@{ALLOWED}"])[f"app@{ALLOWED}"]
    data = source.read_bytes()
    copy = to_replica(relay, source)
    # What the import before left: the file on hold here, byte for byte, not yet requeued.
    left = relay.base / "spool" / "hold" / copy.name
    left.write_bytes(data)
    postfix = pwd.getpwnam("postfix")
    os.chown(left, postfix.pw_uid, postfix.pw_gid)
    left.chmod(0o700)

    report = await agent.import_replica(new_takeover())

    assert report["imported"] == [copy.name] and report["refused"] == []
    assert not copy.exists()
    assert [m["message_id"] for m in wait_for_sink(relay, 1)] == [f"<app@{ALLOWED}>"]


async def test_a_replica_file_named_as_a_message_held_here_releases_nothing(relay, agent):
    """The peer knows this node's queue IDs (Received: headers carry them): a file of its own
    under the name of a message the operator put on hold here must not get it requeued."""
    files = deferred_files(relay, [f"held@{ALLOWED}", f"other@{ALLOWED}"])
    held = files[f"held@{ALLOWED}"]
    relay.exec("postsuper", "-h", held.name)
    planted = relay.replica / "deferred" / "X" / held.name
    planted.parent.mkdir(parents=True)
    shutil.copy2(files[f"other@{ALLOWED}"], planted)

    report = await agent.import_replica(new_takeover())

    assert report["imported"] == []
    assert report["refused"] == [
        {
            "path": f"deferred/X/{held.name}",
            "reason": "a different message of this name is on hold here",
        }
    ]
    [entry] = [e for e in queue(relay) if e["queue_id"] == held.name]
    assert entry["queue_name"] == "hold"
    assert planted.exists()


@pytest.mark.parametrize("network", ["0.0.0.0/1", "[::ffff:0:0]/96", "[2002::]/24"])
async def test_the_agent_refuses_maps_that_trust_a_network_wider_than_the_floor(
    relay, agent, network
):
    files = render.render(2, postfixhost.ONE_ROUTE, str).files
    files["mynetworks"] = f"# hand-made\n{CLIENT}/32\n{network}\n".encode()
    live = (relay.maps_root / "live" / "mynetworks").read_bytes()
    for verb in (agent.check, agent.apply):
        report = await verb(2, files)
        assert not report["applied"]
        assert len(report["problems"]) == 1
        assert report["problems"][0].startswith("mynetworks line 3: ")
        assert (
            "wider than the floor" in report["problems"][0] or "too wide" in (report["problems"][0])
        )
    assert (relay.maps_root / "live" / "mynetworks").read_bytes() == live


async def test_the_agent_refuses_maps_whose_networks_together_trust_all_of_ipv4(relay, agent):
    # Each /8 keeps to the floor; the 256 of them are 0.0.0.0/0.
    files = render.render(2, postfixhost.ONE_ROUTE, str).files
    files["mynetworks"] = "".join(f"{n}.0.0.0/8\n" for n in range(256)).encode()
    live = (relay.maps_root / "live" / "mynetworks").read_bytes()
    report = await agent.apply(2, files)
    assert not report["applied"]
    assert report["problems"] == [
        "mynetworks as a whole: The trusted networks together cover 4,294,967,296 IPv4 "
        "addresses, more than the 33,554,432 (two /8 networks) a relay may trust: together "
        "they would come close to an open relay."
    ]
    assert (relay.maps_root / "live" / "mynetworks").read_bytes() == live


async def test_a_relay_opened_by_hand_gets_no_new_maps(relay, agent):
    relay.exec("postconf", "-e", "smtpd_relay_restrictions=permit")
    try:
        files = render.render(3, postfixhost.ONE_ROUTE, str).files
        report = await agent.apply(3, files)
    finally:
        ours = "permit_mynetworks, reject_unauth_destination"
        relay.exec("postconf", "-e", f"smtpd_relay_restrictions={ours}")
    assert not report["applied"]
    assert report["problems"] == [
        "main.cf smtpd_relay_restrictions = 'permit', not the product's "
        "'permit_mynetworks, reject_unauth_destination': run `mailrelay agent postfix-settings`"
    ]


async def test_a_replica_that_is_a_symlink_is_not_imported(relay, agent):
    shutil.rmtree(relay.replica)
    relay.replica.symlink_to(relay.base / "spool")
    try:
        with pytest.raises(AgentRefused, match="is not a directory"):
            await agent.import_replica(new_takeover())
    finally:
        relay.replica.unlink()


async def test_a_flood_of_refusals_is_counted_and_listed_only_up_to_a_thousand(relay, agent):
    deferred = relay.replica / "deferred" / "0"
    deferred.mkdir(parents=True)
    for index in range(1200):
        (deferred / f"junk{index:08d}").symlink_to("/etc/passwd")

    report = await agent.import_replica(new_takeover())

    assert report["imported"] == []
    assert report["refused_total"] == 1200
    assert len(report["refused"]) == 1000
    assert len(list(deferred.iterdir())) == 1200


def test_files_beyond_the_count_cap_are_not_read(tmp_path):
    """REPLICA_MAX_FILES bounds one import (the agent's walk, run here in-process)."""
    replica, spool = tmp_path / "replica", tmp_path / "spool"
    (spool / "hold").mkdir(parents=True)
    (replica / "hold").mkdir(parents=True)
    for index in range(8):
        (replica / "hold" / f"junk{index:08d}").symlink_to("/etc/passwd")
    requeued: list[list[str]] = []

    report = replica_import.import_replica(
        replica,
        spool,
        replica_import.Limits(max_file_bytes=1024, max_files=5),
        frozenset({ALLOWED}),
        requeued.append,
    )

    assert report.refused_total == 6
    assert report.refused[-1] == {
        "path": "hold",
        "reason": "more than 5 files: the rest is not read",
    }
    assert requeued == [[]]
    agent = load_agent_settings({"REPLICA_MAX_FILES": "7"})
    limits = replica_import.Limits.of(
        agent.replica_max_file_bytes, agent.replica_max_files, 10_240_000
    )
    assert limits == replica_import.Limits(10_240_000 + replica_import.HEADROOM, 7)
    with pytest.raises(SettingsError, match="REPLICA_MAX_FILES must be between 1 and"):
        load_agent_settings({"REPLICA_MAX_FILES": "0"})


async def test_a_file_an_earlier_try_requeued_is_removed_and_not_queued_again(relay, agent):
    """An earlier try of this takeover wrote the file down and requeued it, then stopped
    (the agent was killed) before it removed the file here."""
    copy = to_replica(relay, deferred_files(relay, [f"app@{ALLOWED}"])[f"app@{ALLOWED}"])
    takeover = new_takeover()
    TakeoverJournal(relay.takeover_journal, takeover).took("replica", [copy.name])

    report = await agent.import_replica(takeover)

    assert report["imported"] == [] and report["refused"] == []
    assert report["earlier"] == [copy.name]
    assert not copy.exists()
    assert queue(relay) == []
    time.sleep(2)
    assert received(relay.sink1) == []
