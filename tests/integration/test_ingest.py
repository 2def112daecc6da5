"""Log ingestion against a real PostgreSQL: a generated Postfix log with the lines Postfix 3.7
writes for accepted, delivered, deferred, bounced and expired mail and for NOQUEUE rejects; exact
row counts and values; and nothing lost or counted twice across appends, partial lines, failed
batches, restarts, rotation, truncation and two runners at once."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from app.db.tables import LogCursor, LogMessage, MailLog, RejectionLog
from app.jobs import ingest
from app.postfix.logparse import parse_line
from tests.loggen import START, line, qid, traffic


@pytest.fixture
def log_settings(settings, tmp_path):
    return dataclasses.replace(settings, postfix_log_file=tmp_path / "postfix.log")


async def counts() -> Counter:
    rows = await MailLog.raw("SELECT status, count(*) AS n FROM mail_logs GROUP BY status")
    result = Counter({row["status"]: row["n"] for row in rows})
    result["rejected"] = await RejectionLog.count()
    return +result


async def assert_no_duplicates() -> None:
    doubles = await MailLog.raw(
        "SELECT queue_id, recipient, status, at, count(*) FROM mail_logs "
        "GROUP BY queue_id, recipient, status, at HAVING count(*) > 1"
    )
    assert doubles == []


def write(path: Path, text: str, mode: str = "a") -> None:
    with path.open(mode, encoding="utf-8") as handle:
        handle.write(text)


async def test_it_ingests_a_realistic_log(log_settings):
    log = traffic(0, 30)
    write(log_settings.postfix_log_file, log.text())
    result = await ingest.run_once(log_settings)
    assert result.lines == len(log.lines)
    assert await counts() == log.expect
    assert log.expect == Counter(sent=64, deferred=36, bounced=8, expired=6, rejected=20)
    assert result.mail_rows == 114 and result.rejection_rows == 20
    assert await LogMessage.count() == 30

    first = await MailLog.select().where(MailLog.recipient == "a0@example.org").first()
    assert {k: v for k, v in first.items() if k != "id"} == {
        "at": START + dt.timedelta(seconds=1),
        "node_id": log_settings.node_id,
        "queue_id": "4dLq2G0000z1bc",
        "message_id": "0.4dLq2G0000z1bc@app.example.com",
        "sender": "alerts@example.com",
        "recipient": "a0@example.org",
        "relay": "mx.example.org[203.0.113.5]:25",
        "status": "sent",
        "delay_seconds": 0.51,
        "dsn": "2.0.0",
        "size": 1000,
        "client": "app0.example.com[198.18.0.30]",
    }
    tries = await (
        MailLog.select(MailLog.status, MailLog.relay, MailLog.dsn, MailLog.at)
        .where(MailLog.recipient == "b0@example.org")
        .order_by(MailLog.at)
    )
    assert [(row["status"], row["relay"], row["dsn"]) for row in tries] == [
        ("deferred", "none", "4.4.1"),
        ("sent", "mx.example.org[203.0.113.5]:25", "2.0.0"),
    ]
    bounced = await MailLog.select().where(MailLog.status == "bounced").first()
    assert (bounced["recipient"], bounced["dsn"], bounced["size"]) == (
        "c0@example.net",
        "5.1.1",
        1000,
    )
    expired = await MailLog.select().where(MailLog.status == "expired").order_by(MailLog.at).first()
    assert expired["recipient"] == "late4@example.org"
    assert (expired["queue_id"], expired["sender"], expired["size"]) == (
        qid(4),
        "alerts@example.com",
        1004,
    )
    assert (expired["relay"], expired["dsn"]) == ("none", "4.4.1")  # the last deferral's
    assert expired["delay_seconds"] == 7200
    short = await MailLog.select().where(MailLog.queue_id == qid(5)).first()
    assert short["queue_id"] == "C0FFEE05" and short["message_id"] == "5.C0FFEE05@app.example.com"

    reject = await RejectionLog.select().where(RejectionLog.recipient == "x0@elsewhere.net").first()
    assert {k: v for k, v in reject.items() if k != "id"} == {
        "at": START,
        "node_id": log_settings.node_id,
        "client": "unknown[198.18.0.99]",
        "sender": "app@example.com",
        "recipient": "x0@elsewhere.net",
        "reason": "5.7.1 <x0@elsewhere.net>: Relay access denied",
        "code": 554,
    }
    refused = await RejectionLog.select().where(RejectionLog.code == 553).first()
    assert (refused["sender"], refused["recipient"]) == ("x@bad.example", "")

    # More lines arrive: only they are read.
    more = traffic(30, 10, START + dt.timedelta(seconds=60))
    write(log_settings.postfix_log_file, more.text())
    result = await ingest.run_once(log_settings)
    assert result.lines == len(more.lines)
    assert await counts() == log.expect + more.expect
    await assert_no_duplicates()
    # Nothing new: nothing read, nothing written.
    again = await ingest.run_once(log_settings)
    assert (again.lines, again.rows) == (0, 0)
    assert await counts() == log.expect + more.expect


async def test_a_partial_last_line_waits_for_its_end(log_settings):
    path = log_settings.postfix_log_file
    log = traffic(0, 4)
    whole = log.text()
    last = log.lines[-1]
    cut = len(whole) - len(last) + len(last) // 2
    write(path, whole[:cut])
    result = await ingest.run_once(log_settings)
    assert result.lines == len(log.lines) - 1
    cursor = await LogCursor.select().first()
    assert cursor["position"] == len((whole[: len(whole) - len(last)]).encode())
    assert cursor["inode"] == os.stat(path).st_ino
    write(path, whole[cut:])
    result = await ingest.run_once(log_settings)
    assert result.lines == 1
    assert await counts() == log.expect


async def test_lines_spread_over_many_runs_lose_and_double_nothing(log_settings):
    # Context (client, message-id, qmgr) in one run, its deliveries in a later one.
    path = log_settings.postfix_log_file
    log = traffic(0, 25)
    for start in range(0, len(log.lines), 11):
        write(path, "".join(log.lines[start : start + 11]))
        await ingest.run_once(log_settings, max_lines=4)
    assert await counts() == log.expect
    await assert_no_duplicates()
    row = await (
        MailLog.select()
        .where(MailLog.recipient == "b3@example.org")
        .order_by(MailLog.id, ascending=False)
        .first()
    )
    assert (row["sender"], row["size"], row["client"]) == (
        "alerts@example.com",
        1003,
        "app0.example.com[198.18.0.30]",
    )


async def test_a_batch_that_fails_leaves_rows_and_cursor_as_they_were(log_settings, monkeypatch):
    log = traffic(0, 20)
    write(log_settings.postfix_log_file, log.text())
    real = ingest._write_batch
    calls = 0

    async def crashing(*args):
        nonlocal calls
        calls += 1
        await real(*args)  # the rows are written in the transaction ...
        if calls == 3:
            raise ConnectionResetError("the database went away")  # ... and then it fails

    monkeypatch.setattr(ingest, "_write_batch", crashing)
    with pytest.raises(ConnectionResetError):
        await ingest.run_once(log_settings, max_lines=10)
    cursor = await LogCursor.select().first()
    assert cursor["position"] == len("".join(log.lines[:20]).encode())  # two batches kept
    monkeypatch.setattr(ingest, "_write_batch", real)
    result = await ingest.run_once(log_settings, max_lines=10)  # the restart
    assert result.lines == len(log.lines) - 20
    assert await counts() == log.expect
    await assert_no_duplicates()


@pytest.mark.parametrize("rotated_name", ["postfix.log.1", "postfix.log.20261125-140001"])
async def test_rotation_finishes_the_old_file_first(log_settings, rotated_name):
    path = log_settings.postfix_log_file
    log = traffic(0, 30)
    half = len(log.lines) // 2
    write(path, "".join(log.lines[:half]))
    await ingest.run_once(log_settings)
    # Lines logged after our run but before the rotation ...
    write(path, "".join(log.lines[half : half + 40]))
    path.rename(path.with_name(rotated_name))
    # ... and lines in the new file, some about messages whose context is in the old one.
    write(path, "".join(log.lines[half + 40 :]))
    result = await ingest.run_once(log_settings, max_lines=15)
    assert result.rotated
    assert result.lines == len(log.lines) - half
    assert await counts() == log.expect
    await assert_no_duplicates()
    cursor = await LogCursor.select().first()
    assert (cursor["inode"], cursor["position"]) == (os.stat(path).st_ino, path.stat().st_size)


async def test_rotation_waits_for_the_new_file(log_settings):
    path = log_settings.postfix_log_file
    log = traffic(0, 6)
    write(path, "".join(log.lines[:10]))
    await ingest.run_once(log_settings)
    write(path, "".join(log.lines[10:]))
    path.rename(path.with_name("postfix.log.1"))  # postlogd has not created the new file yet
    result = await ingest.run_once(log_settings)
    assert result.lines == len(log.lines) - 10 and result.missing
    assert await counts() == log.expect
    write(path, traffic(6, 2).text())
    result = await ingest.run_once(log_settings)
    assert result.rotated and result.lines == len(traffic(6, 2).lines)


async def test_rotation_stays_on_the_old_file_until_the_new_one_has_a_line(log_settings):
    # logrotate's `create`: the new, empty file exists before the writer reopens.
    path = log_settings.postfix_log_file
    log = traffic(0, 6)
    write(path, "".join(log.lines[:10]))
    await ingest.run_once(log_settings)
    rotated = path.with_name("postfix.log.1")
    path.rename(rotated)
    path.touch()
    result = await ingest.run_once(log_settings)
    assert not result.rotated and result.lines == 0
    write(rotated, "".join(log.lines[10:30]))  # the writer has not reopened yet
    result = await ingest.run_once(log_settings)
    assert not result.rotated and result.lines == 20
    write(rotated, "".join(log.lines[30:40]))
    write(path, "".join(log.lines[40:]))  # now it has
    result = await ingest.run_once(log_settings)
    assert result.rotated and result.lines == len(log.lines) - 30
    assert await counts() == log.expect


async def test_a_rotated_file_that_is_gone_is_skipped(log_settings):
    path = log_settings.postfix_log_file
    write(path, traffic(0, 3).text())
    await ingest.run_once(log_settings)
    # Rotated and compressed before we came back: the compressed copy is another file. (Kept
    # here under the name so that the file system cannot hand its inode to the new log.)
    path.rename(path.with_name("postfix.log.1.gz"))
    new = traffic(3, 3)
    write(path, new.text())
    result = await ingest.run_once(log_settings)
    assert result.rotated and result.lines == len(new.lines)


async def test_a_truncated_file_is_read_again_from_the_start(log_settings):
    path = log_settings.postfix_log_file
    log = traffic(0, 12)
    write(path, log.text())
    await ingest.run_once(log_settings)
    inode = os.stat(path).st_ino
    fresh = traffic(12, 2)
    write(path, fresh.text(), mode="w")  # copytruncate: same inode, shorter
    assert os.stat(path).st_ino == inode and path.stat().st_size < len(log.text())
    result = await ingest.run_once(log_settings)
    assert result.truncated and result.lines == len(fresh.lines)
    assert await counts() == log.expect + fresh.expect


async def test_a_file_truncated_and_grown_past_the_cursor_is_read_from_its_start(log_settings):
    """copytruncate while the follower was down, and the new file already longer than the
    cursor: its first line tells it is another copy of the log."""
    path = log_settings.postfix_log_file
    log = traffic(0, 2)
    write(path, log.text())
    await ingest.run_once(log_settings)
    fresh = traffic(2, 12, start=START + dt.timedelta(hours=1))
    write(path, fresh.text(), mode="w")
    assert path.stat().st_size > len(log.text())
    result = await ingest.run_once(log_settings)
    assert result.truncated and result.lines == len(fresh.lines)
    assert await counts() == log.expect + fresh.expect


async def test_a_log_that_lost_its_end_in_a_power_cut_is_not_read_again(log_settings):
    """Postfix never syncs its log: after a power cut the same file is shorter than the cursor
    (the kernel had not written its end), and Postfix appends after the cut. Read again from
    its start, months of mail would count twice."""
    path = log_settings.postfix_log_file
    log = traffic(0, 12)
    write(path, log.text())
    await ingest.run_once(log_settings)
    size = path.stat().st_size
    kept = size - sum(len(text.encode()) for text in log.lines[-3:])
    os.truncate(path, kept)
    write(path, traffic(12, 1, start=START + dt.timedelta(hours=1)).lines[0])
    assert path.stat().st_size < size
    result = await ingest.run_once(log_settings)
    assert result.lost_tail and not result.truncated
    assert await counts() == log.expect
    await assert_no_duplicates()
    # What Postfix writes from now on comes in as usual.
    more = traffic(13, 3, start=START + dt.timedelta(hours=2))
    write(path, more.text())
    await ingest.run_once(log_settings)
    assert await counts() == log.expect + more.expect


async def test_a_line_with_nul_bytes_does_not_stop_ingestion(log_settings):
    """Zeroed blocks where a crash left the log's end unwritten, then Postfix's next line: one
    line with NULs, which PostgreSQL refuses in text. The batch failed at every run, for good."""
    path = log_settings.postfix_log_file
    log = traffic(0, 6)
    cut = line(START, "cleanup", f"{qid(900)}: message-id=<cut").rstrip("\n") + "\0" * 600
    cut += "@app.example.com>\n"
    after = traffic(6, 6, start=START + dt.timedelta(hours=1))
    write(path, log.text() + cut + after.text())
    result = await ingest.run_once(log_settings)
    assert result.lines == len(log.lines) + 1 + len(after.lines)
    assert await counts() == log.expect + after.expect
    [stored] = await LogMessage.select(LogMessage.message_id).where(LogMessage.queue_id == qid(900))
    assert stored["message_id"] == "cut" + "?" * 600 + "@app.example.com"


def logrotate(path: Path) -> None:
    """The node's rotation of Postfix's log (postfix-conf/logrotate.conf, as install-node puts it
    in /etc/logrotate.d) by the real logrotate, forced, for `path`; without its `postfix
    reload` (the writer's reopen is what the test does next)."""
    shipped = (Path(__file__).parents[2] / "postfix-conf" / "logrotate.conf").read_text()
    config = re.sub(r"\s*postrotate.*?endscript", "", shipped, flags=re.S)
    assert "/var/log/postfix.log {" in config and "endscript" not in config
    conf = path.with_name("logrotate.conf")
    conf.write_text(config.replace("/var/log/postfix.log", str(path)))
    state = path.with_name("logrotate.state")
    subprocess.run(["logrotate", "-f", "-s", str(state), str(conf)], check=True, timeout=60)


async def test_the_nodes_log_rotation_loses_and_doubles_nothing(log_settings):
    path = log_settings.postfix_log_file
    hour = dt.timedelta(hours=1)
    first, unread, late, fresh, later = (
        traffic(12 * n, 12, start=START + n * hour) for n in range(5)
    )
    write(path, first.text())
    await ingest.run_once(log_settings)
    write(path, unread.text())  # not read yet when the log is rotated
    logrotate(path)
    write(path.with_name(path.name + ".1"), late.text())  # postlogd before its reopen
    write(path, fresh.text())  # after it
    result = await ingest.run_once(log_settings)
    assert result.rotated
    assert await counts() == first.expect + unread.expect + late.expect + fresh.expect
    # The next rotation compresses the file read before, never the one being finished.
    logrotate(path)
    write(path, later.text())
    await ingest.run_once(log_settings)
    names = sorted(p.name for p in path.parent.iterdir() if p.name.startswith("postfix.log"))
    assert names == ["postfix.log", "postfix.log.1", "postfix.log.2.gz"]
    assert await counts() == (
        first.expect + unread.expect + late.expect + fresh.expect + later.expect
    )
    await assert_no_duplicates()


async def test_two_runners_at_once_count_everything_once(log_settings):
    log = traffic(0, 40)
    write(log_settings.postfix_log_file, log.text())
    first, second = await asyncio.gather(
        ingest.run_once(log_settings, max_lines=25), ingest.run_once(log_settings, max_lines=25)
    )
    assert first.lines + second.lines == len(log.lines)
    assert await counts() == log.expect
    await assert_no_duplicates()


async def test_two_runners_taking_turns_write_the_rows_one_runner_writes(log_settings):
    """A runner takes the contexts of the messages a batch continues from the batches it wrote
    itself only while no other runner moved the cursor in between; else from log_messages."""
    write(log_settings.postfix_log_file, traffic(0, 40).text())
    columns = "at, queue_id, message_id, sender, recipient, relay, status, size, client"
    query = f"SELECT {columns} FROM mail_logs ORDER BY {columns}"  # noqa: S608
    await ingest.run_once(log_settings, max_lines=3)
    alone = await MailLog.raw(query)
    await MailLog.raw("TRUNCATE mail_logs, rejection_logs, log_messages, log_cursors")

    first, second = await asyncio.gather(
        ingest.run_once(log_settings, max_lines=3), ingest.run_once(log_settings, max_lines=3)
    )

    assert first.batches > 1 and second.batches > 1  # they took turns
    assert await MailLog.raw(query) == alone


async def test_an_expiry_without_a_deferral_we_saw_still_counts_once(log_settings):
    at = START + dt.timedelta(days=1)
    write(
        log_settings.postfix_log_file,
        line(
            at, "qmgr", "4dLq2G9999z2bc: from=<old@example.com>, status=expired, returned to sender"
        )
        + line(at, "qmgr", "4dLq2G9999z2bc: removed"),
    )
    await ingest.run_once(log_settings)
    rows = await MailLog.select()
    assert [(r["status"], r["recipient"], r["sender"], r["size"]) for r in rows] == [
        ("expired", "", "old@example.com", None)
    ]


async def test_a_new_message_with_a_reused_queue_id_gets_a_fresh_context(log_settings):
    # Short queue ids embed the inode number and come back; smtpd's client= line starts anew.
    q, t = "C0FFEE42", START
    lines = [
        line(t, "smtpd", f"{q}: client=one.example.com[198.18.0.41]"),
        line(t, "cleanup", f"{q}: message-id=<one@example.com>"),
        line(t, "qmgr", f"{q}: from=<one@example.com>, size=111, nrcpt=1 (queue active)"),
        line(t, "qmgr", f"{q}: removed"),
        line(t + dt.timedelta(hours=1), "smtpd", f"{q}: client=two.example.com[198.18.0.42]"),
        line(
            t + dt.timedelta(hours=1, seconds=1),
            "smtp",
            f"{q}: to=<x@example.org>, relay=none, delay=1, delays=1/0/0/0, dsn=4.4.1, "
            "status=deferred (connect timed out)",
        ),
    ]
    write(log_settings.postfix_log_file, "".join(lines))
    await ingest.run_once(log_settings)
    row = await MailLog.select().first()
    assert (row["client"], row["sender"], row["message_id"], row["size"]) == (
        "two.example.com[198.18.0.42]",
        "",
        "",
        None,
    )


async def test_a_reused_queue_id_that_starts_a_later_run_gets_a_fresh_context(log_settings):
    # The second message's client= line is its queue ID's first line in that run: the first
    # message's context is then not even looked up, and must not leak into the new one.
    q, t = "C0FFEE43", START
    write(
        log_settings.postfix_log_file,
        line(t, "smtpd", f"{q}: client=one.example.com[198.18.0.41]")
        + line(t, "cleanup", f"{q}: message-id=<one@example.com>")
        + line(t, "qmgr", f"{q}: from=<one@example.com>, size=111, nrcpt=1 (queue active)")
        + line(t, "qmgr", f"{q}: removed"),
    )
    await ingest.run_once(log_settings)
    later = t + dt.timedelta(hours=1)
    write(
        log_settings.postfix_log_file,
        line(later, "smtpd", f"{q}: client=two.example.com[198.18.0.42]")
        + line(
            later,
            "smtp",
            f"{q}: to=<x@example.org>, relay=none, delay=1, delays=1/0/0/0, dsn=4.4.1, "
            "status=deferred (connect timed out)",
        ),
    )
    await ingest.run_once(log_settings)
    row = await MailLog.select().first()
    assert (row["client"], row["sender"], row["message_id"], row["size"]) == (
        "two.example.com[198.18.0.42]",
        "",
        "",
        None,
    )
    context = await LogMessage.select().where(LogMessage.queue_id == q).first()
    assert (context["client"], context["message_id"], context["first_seen_at"]) == (
        "two.example.com[198.18.0.42]",
        "",
        later,
    )


async def test_no_log_file_yet_is_not_an_error(log_settings):
    result = await ingest.run_once(log_settings)
    assert result.missing and result.lines == 0
    write(log_settings.postfix_log_file, traffic(0, 2).text())
    result = await ingest.run_once(log_settings)
    assert not result.missing and result.lines == len(traffic(0, 2).lines)


def run_cli(*args: str, env: dict[str, str]):
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


async def test_the_cli_ingests_and_reports_one_line(tmp_path):
    path = tmp_path / "postfix.log"
    log = traffic(0, 5)
    write(path, log.text())
    result = run_cli("ingest-logs", env={"POSTFIX_LOG_FILE": str(path)})
    assert result.returncode == 0, result.stderr
    assert f"read {len(log.lines)} lines" in result.stderr
    assert await counts() == log.expect


async def test_an_unreadable_log_is_one_clear_line(tmp_path):
    result = run_cli("ingest-logs", env={"POSTFIX_LOG_FILE": str(tmp_path)})  # a directory
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot read {tmp_path}" in result.stderr


async def wait_for_counts(expect: Counter, seconds: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while await counts() != expect:
        assert asyncio.get_running_loop().time() < deadline, (await counts(), expect)
        await asyncio.sleep(0.05)


async def test_the_follower_reads_lines_as_they_are_appended_until_stopped(log_settings):
    path = log_settings.postfix_log_file
    first, more = traffic(0, 5), traffic(5, 5)
    write(path, first.text())
    stop = asyncio.Event()
    follower = asyncio.create_task(ingest.follow(log_settings, stop))
    await wait_for_counts(first.expect)
    write(path, more.text())
    await wait_for_counts(first.expect + more.expect)
    stop.set()
    await asyncio.wait_for(follower, timeout=10)
    await assert_no_duplicates()
    cursor = await LogCursor.select().first()
    assert cursor["position"] == path.stat().st_size


async def test_the_cli_follower_stops_on_sigterm_and_says_what_it_read(tmp_path):
    path = tmp_path / "postfix.log"
    log = traffic(0, 5)
    write(path, log.text())
    follower = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "ingest-logs", "--follow"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "POSTFIX_LOG_FILE": str(path)},
    )
    try:
        await wait_for_counts(log.expect, seconds=60)
        follower.send_signal(signal.SIGTERM)
        _, stderr = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert follower.returncode == 0, stderr
    assert f"read {len(log.lines)} lines" in stderr


async def test_a_retry_that_repeats_a_known_context_does_not_write_it_again(log_settings):
    log = traffic(0, 10)
    half_hour = START + dt.timedelta(minutes=30)
    now = dt.datetime.now().astimezone()
    stamps = [parse_line(text, now) for text in log.lines]
    split = next(i for i, event in enumerate(stamps) if event and event.at >= half_hour)
    write(log_settings.postfix_log_file, "".join(log.lines[:split]))
    first = await ingest.run_once(log_settings)
    assert first.contexts == 10
    before = await LogMessage.select().order_by(LogMessage.queue_id)
    # An hour later qmgr logs each deferred message again (same sender and size).
    write(log_settings.postfix_log_file, "".join(log.lines[split:]))
    retries = await ingest.run_once(log_settings)
    assert retries.mail_rows > 0 and retries.contexts == 0
    assert await LogMessage.select().order_by(LogMessage.queue_id) == before
    assert await counts() == log.expect
