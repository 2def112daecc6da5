"""The alerts job against a real PostgreSQL, a real SMTP listener (aiosmtpd on loopback), a real
HTTPS webhook (verified TLS) and the peer's real API: each condition starts and clears its alert
exactly once per channel, nothing repeats within the minimum interval, and a channel that fails
is logged and tried again by the next run without repeating the other one.

Node a is the app under test with a fake agent (tests/clusterpeer.py); its peer b is the real
app over HTTPS, passive, sharing the test database (every row carries its node_id).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email
import http.server
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.agent.client import AgentClient
from app.alerts import conditions, run
from app.alerts.state import SEND_LEASE
from app.auth import tokens
from app.db.tables import AppliedVersion, LogCursor, Promotion, SyncRun, VrrpEvent
from app.replication import reconcile
from app.web.app import create_app
from tests.clusterpeer import AGENT_STATUS, fake_agent, passive_slave, peer_settings, serve_https

# The runs' clock starts now: the status' ages (queue, certificate, lag) use the real one.
T0 = dt.datetime.now(dt.UTC)
INTERVAL = 600.0


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def ago(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)


# -- the listeners ---------------------------------------------------------------------------


class Sink:
    """An SMTP server on loopback that keeps what it is given, or refuses with `refuse`."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.refuse: str | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse:
            return self.refuse
        message = email.message_from_bytes(envelope.content)
        self.messages.append(
            {
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "subject": message["Subject"],
                "body": message.get_payload(decode=True).decode(),
                "auto": message["Auto-Submitted"],
            }
        )
        return "250 OK"


@pytest.fixture
def sink() -> Any:
    handler = Sink()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.port = port  # type: ignore[attr-defined]
    yield handler
    controller.stop()


def _certificate(folder: Path, name: str = "hook", days: float = 30) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 valid for `days`, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook.test")])
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        # Its own CA: what OpenSSL's strict checks want from a trust anchor.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class Hook:
    def __init__(self, url: str, ca: Path) -> None:
        self.url, self.ca = url, ca
        self.posts: list[dict[str, Any]] = []
        self.status = 200
        # Set: each POST (of `hang_alert` only, when given) is held until the event is set,
        # and then dropped unrecorded.
        self.hang: threading.Event | None = None
        self.hang_alert: str | None = None
        self.hung = 0


@pytest.fixture
def hook(tmp_path: Path) -> Any:
    """An HTTPS server on loopback that records each JSON POST and answers `hook.status`."""
    cert, key = _certificate(tmp_path / "hook")
    state: dict[str, Hook] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            receiver = state["hook"]
            alert = json.loads(body).get("alert")
            if receiver.hang is not None and receiver.hang_alert in (None, alert):
                receiver.hung += 1
                receiver.hang.wait(30)
                return
            if receiver.status == 200:
                receiver.posts.append(json.loads(body))
            self.send_response(receiver.status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state["hook"] = Hook(f"https://127.0.0.1:{server.server_address[1]}/alerts", cert)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["hook"]
    server.shutdown()
    server.server_close()


# -- node a and its world --------------------------------------------------------------------


@dataclasses.dataclass
class World:
    settings: Any
    agent: Any
    status: dict[str, Any]
    queue: list[dict[str, Any]]
    folder: Path
    sink: Sink
    hook: Hook

    async def run(self, seconds: float) -> run.RunResult:
        return await run.run_once(self.settings, AgentClient(self.agent.path), at(seconds))

    def change(self, **alerts: Any) -> None:
        self.settings = dataclasses.replace(
            self.settings, alerts=dataclasses.replace(self.settings.alerts, **alerts)
        )

    def told(self, key: str) -> list[tuple[str, str]]:
        """What each channel heard about `key`: ("email", "ALERT") / ("webhook", "started")..."""
        title = conditions.TITLES[key]
        mails = [
            ("email", m["subject"].split("]")[1].split(":")[0].strip())
            for m in self.sink.messages
            if m["subject"].endswith(f": {title}")
        ]
        posts = [("webhook", p["state"]) for p in self.hook.posts if p["alert"] == key]
        return mails + posts


@pytest.fixture
async def world(settings, sink, hook, tmp_path) -> AsyncIterator[World]:
    """A calm node a: MASTER, its peer b BACKUP and reachable, a sync that just worked, a few
    messages queued just now, a certificate good for 90 days, both nodes on config version 2."""
    status = json.loads(json.dumps(AGENT_STATUS))
    queue = [{"queue_id": "4dLq2G0001z1bc", "arrival_time": int(dt.datetime.now().timestamp())}]
    async with (
        fake_agent({"status": lambda a: status, "queue_list": lambda a: queue}) as agent,
        fake_agent({"status": AGENT_STATUS}) as agent_b,
    ):
        b = passive_slave(settings, agent_b.path)
        async with serve_https(create_app(b), b) as peer:
            token = await tokens.create("a-to-b", "cluster", "test")
            cert, key = _certificate(tmp_path / "node", "node", 90)
            a = peer_settings(
                dataclasses.replace(
                    settings,
                    node_id="a",
                    cluster_mode="master",
                    vip_address=None,
                    agent_socket=agent.path,
                    state_dir=tmp_path,
                    postfix_log_file=tmp_path / "postfix.log",
                    tls_cert_file=cert,
                    tls_key_file=key,
                    alerts=dataclasses.replace(
                        settings.alerts,
                        email=("ops@example.org",),
                        sender="relay@example.com",
                        smtp_host="127.0.0.1",
                        smtp_port=sink.port,
                        webhook_url=hook.url,
                        webhook_ca_file=hook.ca,
                        min_interval_seconds=INTERVAL,
                        spool_dir=tmp_path,
                        spool_percent=100.0,
                    ),
                ),
                peer,
                token,
            )
            for node_id, state in (("a", "MASTER"), ("b", "BACKUP")):
                await VrrpEvent.insert(
                    VrrpEvent(at=ago(60), node_id=node_id, instance="VI", state=state, priority=1)
                )
            await SyncRun.insert(
                SyncRun(started_at=ago(1), node_id="a", outcome="ok", duration_seconds=0.2)
            )
            for node_id in ("a", "b"):
                await AppliedVersion.insert(
                    AppliedVersion(
                        node_id=node_id, number=2, applied_at=ago(3600), reported_at=ago(1)
                    )
                )
            world = World(a, agent, status, queue, tmp_path, sink, hook)
            await _log_read(world, 0)
            yield world


# -- each condition: (key, make it hold, make it stop) ----------------------------------------


async def _failed_runs(w: World) -> None:
    for _ in range(3):
        await SyncRun.insert(
            SyncRun(started_at=ago(0), node_id="a", outcome="failed", detail="rsync: exit 12")
        )


async def _ok_run(w: World, seconds_ago: float = 0.0) -> None:
    await SyncRun.insert(SyncRun(started_at=ago(seconds_ago), node_id="a", outcome="ok"))


async def _queue(w: World, deferred: int) -> None:
    w.status["queue"]["deferred"] = deferred


async def _arrived(w: World, seconds_ago: float) -> None:
    w.queue[0]["arrival_time"] = int(ago(seconds_ago).timestamp())


async def _peer_at(w: World, url: str | None) -> None:
    if url is None:
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            url = f"https://127.0.0.1:{free.getsockname()[1]}"
        w.folder.joinpath("peer-url").write_text(str(w.settings.peer_api_url))
    else:
        url = w.folder.joinpath("peer-url").read_text()
    w.settings = dataclasses.replace(w.settings, peer_api_url=url)


async def _vrrp_b(w: World, state: str) -> None:
    await VrrpEvent.insert(
        VrrpEvent(at=ago(0), node_id="b", instance="VI", state=state, priority=1)
    )


async def _milter(w: World, state: str) -> None:
    w.status["shadow"]["milter"] = state


async def _held(w: World, ids: list[str]) -> None:
    path = reconcile.pending_file(w.settings)
    if ids:
        path.write_text(json.dumps(ids))
    else:
        path.unlink()


async def _cert_days(w: World, days: float) -> None:
    cert, key = _certificate(w.folder / f"node-{days}", "node", days)
    w.settings = dataclasses.replace(w.settings, tls_cert_file=cert, tls_key_file=key)


async def _spool(w: World, percent: float) -> None:
    w.change(spool_percent=percent)


async def _b_runs(w: World, number: int) -> None:
    await AppliedVersion.update({AppliedVersion.number: number}).where(
        AppliedVersion.node_id == "b"
    )


async def _backup_made(w: World, hours_before: float) -> None:
    """This node's only dump in BACKUP_DIR, made `hours_before` the runs' time."""
    folder = w.folder / "backups"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    dump = folder / "mailrelay-a-20261201T000000Z.dump"
    dump.write_bytes(b"PGDMP")
    made = (T0 - dt.timedelta(hours=hours_before)).timestamp()
    os.utime(dump, (made, made))
    w.settings = dataclasses.replace(w.settings, backup_dir=folder)


async def _log_read(w: World, minutes_ago: float, unread: int = 0) -> None:
    """The mail log as ingestion left it: read up to `unread` bytes before its end, the last
    time `minutes_ago` minutes before the runs' time."""
    log_file = w.settings.postfix_log_file
    log_file.write_bytes(b"x" * 4000)
    await LogCursor.raw(
        "INSERT INTO log_cursors (source, inode, position, updated_at) VALUES ({}, {}, {}, {}) "
        "ON CONFLICT (source) DO UPDATE SET inode = excluded.inode, "
        "position = excluded.position, updated_at = excluded.updated_at",
        str(log_file),
        log_file.stat().st_ino,
        4000 - unread,
        T0 - dt.timedelta(minutes=minutes_ago),
    )


Step = Callable[[World], Awaitable[None]]


async def _takeover(world: World, error: str) -> None:
    """Node a's takeover of b's queue, for its MASTER event: failed (`error`) or done."""
    master = await (
        VrrpEvent.select(VrrpEvent.at)
        .where(VrrpEvent.node_id == "a")
        .order_by(VrrpEvent.id, ascending=False)
        .first()
    )
    at = master["at"]
    await Promotion.insert(Promotion(node_id="a", master_at=at, finished_at=at, error=error))


CASES: dict[str, tuple[Step, Step]] = {
    "sync_failing": (_failed_runs, _ok_run),
    "replication_lag": (lambda w: _ok_run(w, 3600), _ok_run),
    "queue_size": (lambda w: _queue(w, 5000), lambda w: _queue(w, 4)),
    "queue_age": (lambda w: _arrived(w, 7200), lambda w: _arrived(w, 5)),
    "peer_unreachable": (lambda w: _peer_at(w, None), lambda w: _peer_at(w, "back")),
    "unprotected_mail": (lambda w: _milter(w, "not answering"), lambda w: _milter(w, "answering")),
    "both_master": (lambda w: _vrrp_b(w, "MASTER"), lambda w: _vrrp_b(w, "BACKUP")),
    "mail_held": (lambda w: _held(w, ["4dLq2G0001z1bc"]), lambda w: _held(w, [])),
    "takeover_failed": (lambda w: _takeover(w, "the agent is down"), lambda w: _takeover(w, "")),
    "tls_cert_expiring": (lambda w: _cert_days(w, 5), lambda w: _cert_days(w, 90)),
    "spool_full": (lambda w: _spool(w, 1.0), lambda w: _spool(w, 100.0)),
    "config_drift": (lambda w: _b_runs(w, 1), lambda w: _b_runs(w, 2)),
    "backup_stale": (lambda w: _backup_made(w, 48), lambda w: _backup_made(w, 2)),
    "ingest_stalled": (lambda w: _log_read(w, 30, unread=700), lambda w: _log_read(w, 0)),
}


def test_every_alert_has_a_case_here():
    assert set(CASES) == set(conditions.TITLES)


@pytest.mark.parametrize("key", sorted(CASES))
async def test_each_condition_starts_and_clears_its_alert_once(world, key):
    start, stop = CASES[key]
    calm = await world.run(0)
    assert calm.active == [] and calm.sent == [] and calm.failed == [], calm
    assert world.sink.messages == [] and world.hook.posts == []

    await start(world)
    result = await world.run(30)
    assert result.active == [key]
    assert world.told(key) == [("email", "ALERT"), ("webhook", "started")]
    mail = world.sink.messages[0]
    assert (mail["from"], mail["to"], mail["auto"]) == (
        "relay@example.com",
        ["ops@example.org"],
        "auto-generated",
    )
    assert mail["subject"] == f"[mailrelay a] ALERT: {conditions.TITLES[key]}"
    post = world.hook.posts[0]
    assert (post["node"], post["alert"], post["state"]) == ("a", key, "started")
    assert post["summary"] and post["summary"] in mail["body"]

    await world.run(60)  # still holds: nothing new
    # It stops, and comes back, and stops again, all within the minimum interval: no storm.
    await stop(world)
    assert (await world.run(90)).waiting == [f"email: cleared {key}", f"webhook: cleared {key}"]
    await start(world)
    await world.run(120)
    await stop(world)
    await world.run(150)
    assert world.told(key) == [("email", "ALERT"), ("webhook", "started")]

    # Past the interval: the state of that moment, once.
    await world.run(30 + INTERVAL)
    assert world.told(key) == [
        ("email", "ALERT"),
        ("email", "cleared"),
        ("webhook", "started"),
        ("webhook", "cleared"),
    ]
    await world.run(60 + INTERVAL)
    assert len(world.told(key)) == 4
    assert len(world.sink.messages) == 2 and len(world.hook.posts) == 2  # no other alert spoke


async def test_a_failing_webhook_is_logged_and_tried_again_without_repeating_the_mail(
    world, caplog
):
    world.hook.status = 503
    await CASES["queue_size"][0](world)
    with caplog.at_level(logging.INFO, logger="mailrelay.alerts"):
        first = await world.run(0)
    assert first.sent == ["email: started queue_size"]
    assert first.failed == ["webhook: started queue_size"]
    assert f"webhook {world.hook.url} answered HTTP 503" in caplog.text
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alerts: checked")]
    assert len(line) == 1 and "failed 1" in line[0] and " s" in line[0]

    second = await world.run(30)  # still failing: tried again, the run goes on
    assert second.failed == ["webhook: started queue_size"] and second.sent == []
    world.hook.status = 200
    third = await world.run(60)  # no wait for the interval: it never got through
    assert third.sent == ["webhook: started queue_size"]
    assert world.told("queue_size") == [("email", "ALERT"), ("webhook", "started")]


async def test_a_webhook_whose_certificate_does_not_verify_gets_nothing(world, caplog):
    world.change(webhook_ca_file=None)  # the system's CAs do not know the test's certificate
    await CASES["mail_held"][0](world)
    result = await world.run(0)
    assert result.failed == ["webhook: started mail_held"]
    assert world.hook.posts == []
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_a_refused_alert_mail_is_tried_again(world, caplog):
    world.sink.refuse = "451 4.3.0 try again later"
    await CASES["spool_full"][0](world)
    result = await world.run(0)
    assert result.failed == ["email: started spool_full"]
    assert "451 4.3.0 try again later" in caplog.text
    world.sink.refuse = None
    assert (await world.run(30)).sent == ["email: started spool_full"]
    assert world.told("spool_full") == [("email", "ALERT"), ("webhook", "started")]


async def test_a_notice_whose_run_died_before_sending_it_is_sent_by_a_later_run(world):
    """The run claims the notice, then is killed while the webhook has not answered yet: the
    channel never heard of it. Within SEND_LEASE that run may still be sending; after it, a
    run undoes the claim and sends the notice, and the mail, sent before, is not repeated."""
    world.hook.hang = threading.Event()
    await CASES["queue_size"][0](world)
    killed = asyncio.create_task(world.run(0))
    for _ in range(200):
        if world.hook.hung:
            break
        await asyncio.sleep(0.05)
    assert world.hook.hung == 1
    killed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await killed
    world.hook.hang.set()
    world.hook.hang = None
    assert (await world.run(60)).sent == []  # it may still be sending
    lease = SEND_LEASE.total_seconds()
    assert (await world.run(lease + 60)).sent == ["webhook: started queue_size"]
    assert world.told("queue_size") == [("email", "ALERT"), ("webhook", "started")]


async def test_a_notice_sent_while_the_clock_was_ahead_does_not_silence_the_next(world):
    """The clock was a year ahead when the alert started (a bad real-time clock before NTP
    set it): once it is right, the alert's end is told at the next run after the interval, not
    a year later."""
    year = 365 * 24 * 3600
    await CASES["queue_size"][0](world)
    assert "email: started queue_size" in (await world.run(year)).sent
    await CASES["queue_size"][1](world)
    cleared = await world.run(1200)
    assert "email: cleared queue_size" in cleared.sent
    assert "webhook: cleared queue_size" in cleared.sent


async def test_a_claim_dated_in_the_future_is_undone(world):
    """A run killed mid-send while the clock was a year ahead: its claim is undone once the
    clock is right, not a year later."""
    world.hook.hang = threading.Event()
    world.hook.hang_alert = "queue_size"
    await CASES["queue_size"][0](world)
    killed = asyncio.create_task(world.run(365 * 24 * 3600))
    for _ in range(200):
        if world.hook.hung:
            break
        await asyncio.sleep(0.05)
    killed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await killed
    assert world.hook.hung == 1
    world.hook.hang.set()
    world.hook.hang = None
    assert "webhook: started queue_size" in (await world.run(60)).sent
    assert world.told("queue_size") == [("email", "ALERT"), ("webhook", "started")]


async def test_a_backup_dated_in_the_future_does_not_hide_the_backups_that_stopped(world):
    """A dump written while the clock was a year ahead, then no backup at all: it counts as
    made when first seen, and the alert comes 36 hours after that, not a year later."""
    await _backup_made(world, 72)
    future = world.settings.backup_dir / "mailrelay-a-20271201T000000Z.dump"
    future.write_bytes(b"PGDMP")
    year_ahead = (T0 + dt.timedelta(days=365)).timestamp()
    os.utime(future, (year_ahead, year_ahead))
    assert "email: started backup_stale" not in (await world.run(0)).sent
    assert future.stat().st_mtime == T0.timestamp()
    assert "email: started backup_stale" in (await world.run(37 * 3600)).sent


async def test_two_runs_at_once_send_each_notice_once(world):
    await CASES["config_drift"][0](world)
    results = await asyncio.gather(world.run(0), world.run(0))
    assert sorted(sent for r in results for sent in r.sent) == [
        "email: started config_drift",
        "webhook: started config_drift",
    ]
    assert world.told("config_drift") == [("email", "ALERT"), ("webhook", "started")]


async def test_mail_accepted_without_a_copy_since_the_last_check_is_an_alert_until_a_check_without(
    world,
):
    await world.run(0)
    world.status["shadow"]["unprotected_total"] += 2
    grew = await world.run(30)
    assert grew.active == ["unprotected_mail"]
    assert "2 messages were accepted without a shadow copy" in world.sink.messages[0]["body"]
    same = await world.run(60)
    assert same.active == []


async def test_the_dashboard_and_metrics_list_the_active_alerts(world, login_as, client):
    await CASES["queue_size"][0](world)
    await CASES["mail_held"][0](world)
    await world.run(0)
    # The app under test is node a too (the tests' settings): it shows what the job found.
    reader = await login_as("readonly")
    page = (await reader.get("/", headers={"accept-language": "de"})).text
    assert 'id="active-alerts"' in page
    assert "Warteschlangengröße" in page and "Mail zur Freigabe angehalten" in page
    assert "Nachrichten in der Warteschlange (Grenze 1000)" in page

    headers = {"authorization": "Bearer " + await tokens.create("prometheus", "read", "test")}
    text = (await client.get("/metrics", headers=headers)).text
    assert 'mailrelay_alert_active{node="a",alert="mail_held"} 1' in text
    assert 'mailrelay_alert_active{node="a",alert="queue_size"} 1' in text
    assert 'mailrelay_alerts_last_check_timestamp_seconds{node="a"}' in text


async def test_mailrelay_alerts_runs_once_and_says_what_it_did(world, tmp_path):
    """The command the timer runs, as a real process: this node with its agent down (no queue
    figures: nothing judged about them), a held message, the test's sink and webhook."""
    await CASES["mail_held"][0](world)
    env = {
        **os.environ,
        "NODE_ID": "a",
        "STATE_DIR": str(world.settings.state_dir),
        "AGENT_SOCKET": str(tmp_path / "no-agent.sock"),
        "ALERT_EMAIL": "ops@example.org",
        "ALERT_FROM": "relay@example.com",
        "ALERT_SMTP_PORT": str(world.sink.port),  # type: ignore[attr-defined]
        "ALERT_WEBHOOK_URL": world.hook.url,
        "ALERT_WEBHOOK_CA_FILE": str(world.hook.ca),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "alerts"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "alerts: checked" in line]
    assert len(lines) == 1, done.stderr
    assert "1 active (mail_held)" in lines[0] and "sent 2" in lines[0]
    assert world.told("mail_held") == [("email", "ALERT"), ("webhook", "started")]
