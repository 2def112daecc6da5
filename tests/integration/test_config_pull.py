"""Config pull: the slave (this test's database) pulls from a real master over real HTTPS.

The master is `mailrelay serve` in its own process with its own database and STATE_DIR, a
certificate signed by a test CA, and a copy of the slave's SECRET_KEY_FILE (as the installer
copies it), so that sealed secrets open. Its configuration is changed by the config service in
a separate process; only a snapshot that the service would never write (the invalid version) is
written straight into its database, as a buggy or compromised master could.

The agent is a stub: a unix-socket server that answers `apply` with no problems (or with the
problems a test sets). There is no Postfix here; the real agent is tested in test_postfix.py.
The master's "Apply changes" (op `apply`) is its real pipeline.apply_version (render, audit,
record what runs) with a stub agent of its own in the master's process, which answers with the
problems the op names: the export serves only what that apply recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.agent.client import AgentClient
from app.cluster import configstate, peer, pull
from app.cluster.peer import PeerTls
from app.config import snapshot as snap
from app.crypto import SecretBox, ensure_secret_key
from app.db.tables import AppliedVersion, AuditLog, ConfigVersion
from app.settings import SettingsError, load_settings
from app.tls import fingerprint
from tests.conftest import TABLES

SECRET = "relay-secret-789"
MASTER_DB = "mailrelay_pull_master"

# Runs in the master's environment: the same service functions the master's GUI calls.
MASTER_SCRIPT = """
import asyncio, json, sys, tempfile
from pathlib import Path

from app.agent.client import AgentClient
from app.auth import tokens
from app.config import service
from app.crypto import SecretBox
from app.postfix import pipeline


async def apply(box, actor, problems):
    async def answer(reader, writer):
        request = json.loads(await reader.readline())
        result = {"version": request["args"]["version"], "problems": problems}
        writer.write(json.dumps({"ok": True, "result": result}).encode() + b"\\n")
        await writer.drain()
        writer.close()

    with tempfile.TemporaryDirectory(prefix="mr-master-agent-") as folder:
        server = await asyncio.start_unix_server(answer, f"{folder}/agent.sock")
        async with server:
            latest = await service.latest_version()
            agent = AgentClient(Path(folder) / "agent.sock")
            report = await pipeline.apply_version(latest["number"], box, agent, "a", actor)
    return report.ok


async def main():
    box = SecretBox(Path(sys.argv[1]))
    actor = service.Actor("master-admin")
    out = []
    for op, *args in json.load(sys.stdin):
        if op == "token":
            out.append(await tokens.create(args[0], args[1], "test"))
        elif op == "domain":
            out.append(await service.add_domain(actor, *args))
        elif op == "route":
            out.append(await service.set_route(actor, box, *args))
        elif op == "network":
            out.append(await service.add_network(actor, *args))
        elif op == "delete_network":
            out.append(await service.delete_network(actor, *args))
        elif op == "apply":
            out.append(await apply(box, actor, *args))
        else:
            raise SystemExit(f"unknown op {op}")
    print(json.dumps(out))


asyncio.run(main())
"""


# -- certificates -----------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
) -> bytes:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@dataclasses.dataclass
class Pki:
    ca_file: Path
    master_cert: Path
    master_key: Path
    stranger_cert: Path  # self-signed, as an impostor on the network would have
    stranger_key: Path
    other_ca_file: Path  # a CA that did not sign the master's certificate


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    folder = Path(tempfile.mkdtemp(prefix="mailrelay-pull-pki-"))
    files: dict[str, Path] = {}

    def write(name: str, content: bytes) -> Path:
        files[name] = folder / name
        files[name].write_bytes(content)
        return files[name]

    ca_key, other_ca_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    master_key, stranger_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    yield Pki(
        ca_file=write("ca.pem", _cert("test CA", ca_key, ca=True)),
        master_cert=write("master.crt", _cert("master", master_key, ("test CA", ca_key))),
        master_key=write("master.key", _pem_key(master_key)),
        stranger_cert=write("stranger.crt", _cert("master", stranger_key)),
        stranger_key=write("stranger.key", _pem_key(stranger_key)),
        other_ca_file=write("other-ca.pem", _cert("other CA", other_ca_key, ca=True)),
    )
    shutil.rmtree(folder, ignore_errors=True)


# -- the master -------------------------------------------------------------------------------


@dataclasses.dataclass
class Master:
    url: str
    dsn: str
    env: dict[str, str]
    key_file: Path
    pin: str  # "AB:CD:..." as `mailrelay serve` prints it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def master(pg_cluster: Any, settings: Any, pki: Pki) -> Iterator[Master]:
    dsn = pg_cluster.create_database(MASTER_DB)
    state = Path(tempfile.mkdtemp(prefix="mailrelay-master-state-"))
    # Both nodes share the key file's content (the installer copies it to the slave).
    ensure_secret_key(settings.secret_key_file)
    key_file = state / "secret.key"
    shutil.copyfile(settings.secret_key_file, key_file)
    key_file.chmod(0o600)
    port = _free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MASTER_", "CLUSTER_", "TLS_", "NODE_", "HTTPS_"))
    } | {
        "DATABASE_URL": dsn,
        "PICCOLO_CONF": "app.piccolo_conf",
        "STATE_DIR": str(state),
        "SECRET_KEY_FILE": str(key_file),
        "TLS_CERT_FILE": str(pki.master_cert),
        "TLS_KEY_FILE": str(pki.master_key),
        "CLUSTER_MODE": "master",
        "NODE_ID": "a",
        "HTTPS_HOST": "127.0.0.1",
        "HTTPS_PORT": str(port),
    }
    migrated = _cli("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    log_file = state / "serve.log"
    with log_file.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], env=env, stdout=log, stderr=log
        )
    url = f"https://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, pki.ca_file, server, log_file)
        yield Master(url, dsn, env, key_file, fingerprint(pki.master_cert))
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        pg_cluster.drop_database(MASTER_DB)
        shutil.rmtree(state, ignore_errors=True)


def _wait_until_serving(url: str, ca_file: Path, server: Any, log_file: Path) -> None:
    deadline = time.monotonic() + 60
    context = ssl.create_default_context(cafile=str(ca_file))
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the master exited:\n{log_file.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", verify=context, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"the master did not start:\n{log_file.read_text()}")


def master_do(master: Master, *ops: list[Any]) -> list[Any]:
    """Run config service (and token) operations in a process of the master's own."""
    result = subprocess.run(
        [sys.executable, "-c", MASTER_SCRIPT, str(master.key_file)],
        input=json.dumps(list(ops)),
        capture_output=True,
        text=True,
        env=master.env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture
async def master_db(master: Master) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(master.dsn)
    await connection.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    yield connection
    await connection.close()


async def token_last_used(master_db: asyncpg.Connection, name: str) -> Any:
    return await master_db.fetchval("SELECT last_used_at FROM api_tokens WHERE name = $1", name)


def master_config(master: Master) -> None:
    """Version 1-4 on the master: a domain, its route with SMTP AUTH, a second domain, a
    trusted network; version 4 applied there."""
    master_do(
        master,
        ["domain", "example.com"],
        ["route", "example.com", "smtp.example.net", 587, "encrypt", "relayuser", SECRET],
        ["domain", "example.org"],
        ["network", "192.0.2.0/24"],
        ["apply", []],
    )


# -- the agent stub and a stand-in TLS server -------------------------------------------------


class AgentStub:
    """Answers `apply` like the real agent: {"problems": [...]} (empty unless a test says)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mr-agent-"))  # short: unix socket paths
        self.path = self.folder / "agent.sock"
        self.calls: list[dict[str, Any]] = []
        self.problems: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        request = json.loads(line)
        self.calls.append(request)
        result = {"version": request["args"].get("version"), "problems": list(self.problems)}
        result["applied"] = not self.problems
        writer.write(json.dumps({"ok": True, "result": result}).encode() + b"\n")
        await writer.drain()
        writer.close()

    @property
    def applied(self) -> list[int]:
        return [c["args"]["version"] for c in self.calls if c["verb"] == "apply"]


@pytest.fixture
async def agent() -> AsyncIterator[AgentStub]:
    stub = AgentStub()
    server = await asyncio.start_unix_server(stub.handle, path=str(stub.path), limit=2**26)
    yield stub
    server.close()
    await server.wait_closed()
    shutil.rmtree(stub.folder, ignore_errors=True)


class TlsServer:
    """A TLS server on 127.0.0.1 that records every byte it receives and, if given a body,
    answers the first request with it."""

    def __init__(self, cert: Path, key: Path, body: bytes | None = None, drip: float = 0.0) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.body = body
        self.drip = drip  # seconds between the body's bytes
        self.received = b""
        self.connections = 0

    async def __aenter__(self) -> TlsServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.context)
        self.url = f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while b"\r\n\r\n" not in self.received:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                self.received += chunk
            if self.body is not None:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(self.body)
                )
                for at in range(0, len(self.body), 1 if self.drip else len(self.body)):
                    writer.write(self.body[at : at + (1 if self.drip else len(self.body))])
                    await writer.drain()
                    await asyncio.sleep(self.drip)
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()


# -- the slave --------------------------------------------------------------------------------


@pytest.fixture
def box(app: Any) -> SecretBox:
    return SecretBox(app.state.settings.secret_key_file)


def slave(settings: Any, url: str, token: str, wait: float = 0.0) -> Any:
    """The slave's settings; `wait` is CONFIG_PULL_WAIT_SECONDS (the long poll, off unless a
    test is about it)."""
    return dataclasses.replace(
        settings,
        cluster_mode="slave",
        master_api_url=url,
        master_api_token=token,
        node_id="b",
        config_pull_wait_seconds=wait,
    )


def master_tls(env: dict[str, str], required: bool = True) -> PeerTls:
    """What config-pull makes of the MASTER_* variables, read as a node reads them."""
    return PeerTls.for_master(load_settings({"DATABASE_URL": "postgresql:///x", **env}), required)


def pinned(value: str) -> PeerTls:
    return master_tls({"MASTER_CERT_FINGERPRINT": value})


async def run(settings: Any, agent: AgentStub, box: SecretBox, how: PeerTls) -> Any:
    return await pull.run_once(settings, AgentClient(agent.path, timeout=10), box, how)


def clear(snapshot: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    """A snapshot with each at-rest password decrypted (the ciphertexts differ per node)."""
    out = json.loads(json.dumps(snapshot))
    for entry in out["sender_domains"]:
        route = entry.get("route")
        if route and route.get("auth_password_enc"):
            route["auth_password_enc"] = box.decrypt(route["auth_password_enc"])
    return out


async def master_latest(master_db: asyncpg.Connection) -> dict[str, Any]:
    row = await master_db.fetchrow(
        "SELECT number, snapshot, created_at FROM config_versions ORDER BY number DESC LIMIT 1"
    )
    return {
        "number": row["number"],
        "snapshot": json.loads(row["snapshot"]),
        "created_at": row["created_at"],
    }


async def local_versions() -> list[dict[str, Any]]:
    return await ConfigVersion.select(
        ConfigVersion.number, ConfigVersion.author, ConfigVersion.comment
    ).order_by(ConfigVersion.number)


# -- tests ------------------------------------------------------------------------------------


async def test_it_does_nothing_on_a_master(settings, agent, box):
    result = await run(settings, agent, box, pinned("00" * 32))
    assert result.outcome == "skipped" and result.ok
    assert "nothing to pull" in result.detail
    assert agent.calls == [] and await local_versions() == []


async def test_it_pulls_a_newer_version_and_applies_it(
    settings, master, master_db, agent, box, caplog
):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    caplog.set_level("INFO", logger="mailrelay.config_pull")

    result = await run(slave(settings, master.url, token), agent, box, pinned(master.pin))

    assert result.outcome == "applied", result.detail
    assert (result.master_version, result.local_version) == (4, 1)
    # The tables equal the master's; the password decrypts here to the same clear text.
    assert clear(await snap.current(), box) == clear(
        (await master_latest(master_db))["snapshot"], box
    )
    route = (await snap.current())["sender_domains"][0]["route"]
    assert box.decrypt(route["auth_password_enc"]) == SECRET
    # Stored as a version of its own, marked as pulled, and applied through the agent.
    [version] = await local_versions()
    assert (version["number"], version["author"]) == (1, "config-pull")
    made = (await master_latest(master_db))["created_at"].isoformat()
    assert version["comment"] == f"pulled master version 4 of {made}"
    assert agent.applied == [1]
    applied = await AppliedVersion.select().where(AppliedVersion.node_id == "b").first()
    assert applied["number"] == 1
    audit = await AuditLog.select(AuditLog.action, AuditLog.actor, AuditLog.outcome).order_by(
        AuditLog.id
    )
    assert {"action": "config.pull", "actor": "config-pull", "outcome": "ok"} in audit
    assert {"action": "config.apply", "actor": "config-pull", "outcome": "ok"} in audit
    assert await token_last_used(master_db, "slave-b") is not None
    # One log line for the run, saying what and how long.
    lines = [r.getMessage() for r in caplog.records if r.name == "mailrelay.config_pull"]
    assert len(lines) == 1
    assert "applied: master version 4 applied as local version 1" in lines[0]
    assert lines[0].endswith(" s")


async def test_the_same_version_again_is_nothing_to_do_and_a_newer_one_is_pulled(
    settings, master, master_db, agent, box
):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)
    assert (await run(node, agent, box, pinned(master.pin))).outcome == "applied"

    again = await run(node, agent, box, pinned(master.pin))
    assert again.outcome == "unchanged" and again.ok
    assert "master version 4 is applied already" in again.detail
    assert len(await local_versions()) == 1 and agent.applied == [1]

    master_do(
        master,
        ["delete_network", "192.0.2.0/24"],
        ["network", "198.51.100.0/24"],
        ["apply", []],
    )
    newer = await run(node, agent, box, pinned(master.pin))
    assert newer.outcome == "applied", newer.detail
    assert (newer.master_version, newer.local_version) == (6, 2)
    assert (await snap.current())["trusted_networks"] == [
        {"cidr": "198.51.100.0/24", "comment": ""}
    ]
    assert agent.applied == [1, 2]


async def test_a_version_of_the_same_number_made_again_on_a_restored_master_is_pulled(
    settings, master, master_db, agent, box
):
    """The master restored from a backup made before its version 4, and a version 4 made again
    with other content: the number alone said "applied already", and the nodes relayed by two
    configurations while both reported the same version."""
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)
    assert (await run(node, agent, box, pinned(master.pin))).outcome == "applied"
    latest = await master_latest(master_db)
    other = latest["snapshot"] | {"trusted_networks": [{"cidr": "198.51.100.0/24", "comment": ""}]}
    await master_db.execute(
        "UPDATE config_versions SET snapshot = $2, checksum = $3, "
        "created_at = created_at + interval '1 hour' WHERE number = $1",
        latest["number"],
        json.dumps(other),
        snap.checksum(other),
    )

    again = await run(node, agent, box, pinned(master.pin))

    assert again.outcome == "applied", again.detail
    assert (again.master_version, again.local_version) == (4, 2)
    assert (await snap.current())["trusted_networks"] == other["trusted_networks"]
    assert (await run(node, agent, box, pinned(master.pin))).outcome == "unchanged"


async def test_a_pull_waits_at_the_master_for_a_newer_version(
    settings, master, master_db, agent, box
):
    """The long poll: with nothing new the master holds the answer for the wait; a version made
    during the wait is answered at once, so the slave needs no timer run to see it."""
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    assert (await run(slave(settings, master.url, token), agent, box, pinned(master.pin))).ok

    started = time.monotonic()
    idle = await run(slave(settings, master.url, token, wait=1.5), agent, box, pinned(master.pin))
    assert idle.outcome == "unchanged", idle.detail
    assert time.monotonic() - started >= 1.5, "the master answered before the wait ran out"

    node = slave(settings, master.url, token, wait=15)
    waiting = asyncio.create_task(run(node, agent, box, pinned(master.pin)))
    await asyncio.to_thread(master_do, master, ["domain", "draft.example"])  # not applied
    await asyncio.sleep(1.0)
    assert not waiting.done(), "the master answered although it applied nothing new"
    assert agent.applied == [1]
    # Each version made during the run is applied when it is made, not when the run ends; the
    # run goes on waiting at the master after an apply.
    for domain, applied in (("example.net", [1, 2]), ("example.info", [1, 2, 3])):
        changed = time.monotonic()
        await asyncio.to_thread(master_do, master, ["domain", domain], ["apply", []])
        while agent.applied != applied:
            assert time.monotonic() - changed < 10, f"{domain} was not applied during the wait"
            assert not waiting.done(), (await waiting).detail
            await asyncio.sleep(0.1)
    result = await asyncio.wait_for(waiting, 60)
    assert result.outcome == "applied" and result.master_version == 7, result.detail
    assert result.detail.startswith("2 versions, the last: master version 7 applied")


async def test_the_export_refuses_an_unbounded_wait(master, master_db):
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    context = ssl.create_default_context(cafile=str(master.env["TLS_CERT_FILE"]))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with httpx.AsyncClient(verify=context) as client:
        response = await client.get(
            master.url + "/api/config/export",
            params={"newer_than": 0, "wait": 3600},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 400
    assert "wait at most 60 seconds" in response.text


async def test_a_ca_file_instead_of_a_pin(settings, master, master_db, pki, agent, box):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    # Both set: the chain and the pin must both hold.
    both = {"MASTER_CA_FILE": str(pki.ca_file), "MASTER_CERT_FINGERPRINT": "AB" * 32}
    result = await run(slave(settings, master.url, token), agent, box, master_tls(both))
    assert result.outcome == "failed" and "the token was not sent" in result.detail
    assert await token_last_used(master_db, "slave-b") is None

    how = master_tls({"MASTER_CA_FILE": str(pki.ca_file)})
    result = await run(slave(settings, master.url, token), agent, box, how)
    assert result.outcome == "applied", result.detail


async def test_a_wrong_fingerprint_is_refused_before_the_token_is_sent(
    settings, master, master_db, pki, agent, box
):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    wrong = fingerprint(pki.stranger_cert)

    # The real master, pinned to another certificate: it never sees the token.
    result = await run(slave(settings, master.url, token), agent, box, pinned(wrong))
    assert result.outcome == "failed" and not result.ok
    assert "not the pinned MASTER_CERT_FINGERPRINT" in result.detail
    assert "the token was not sent" in result.detail
    assert await token_last_used(master_db, "slave-b") is None
    assert await local_versions() == [] and agent.calls == []

    # An impostor in the master's place: it completes a TLS handshake but receives no byte.
    async with TlsServer(pki.stranger_cert, pki.stranger_key) as impostor:
        result = await run(slave(settings, impostor.url, token), agent, box, pinned(master.pin))
        for _ in range(50):
            if impostor.connections:
                break
            await asyncio.sleep(0.02)
    assert result.outcome == "failed" and "the token was not sent" in result.detail
    assert impostor.connections == 1
    assert impostor.received == b""


async def test_a_certificate_from_another_ca_is_refused_before_the_token_is_sent(
    settings, master, master_db, pki, agent, box
):
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    async with TlsServer(pki.stranger_cert, pki.stranger_key) as impostor:
        how = master_tls({"MASTER_CA_FILE": str(pki.ca_file)})
        result = await run(slave(settings, impostor.url, token), agent, box, how)
    assert result.outcome == "failed"
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert impostor.received == b""
    # And the real master under a CA that did not sign its certificate.
    how = master_tls({"MASTER_CA_FILE": str(pki.other_ca_file)})
    result = await run(slave(settings, master.url, token), agent, box, how)
    assert result.outcome == "failed" and "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert await token_last_used(master_db, "slave-b") is None


async def test_a_tampered_export_is_refused(settings, master, master_db, pki, agent, box):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    async with httpx.AsyncClient(verify=context) as client:
        response = await client.get(
            master.url + "/api/config/export", headers={"authorization": f"Bearer {token}"}
        )
    export = response.json()
    export["config"]["sender_domains"][0]["route"]["host"] = "smtp.attacker.example"
    # Served with the master's own certificate, so the pin passes and the checksum must catch it.
    async with TlsServer(pki.master_cert, pki.master_key, json.dumps(export).encode()) as fake:
        result = await run(slave(settings, fake.url, token), agent, box, pinned(master.pin))
    assert result.outcome == "refused" and not result.ok
    assert "master version 4: checksum mismatch" in result.detail
    assert await local_versions() == [] and agent.calls == []
    assert await snap.current() == snap.empty()
    assert await AuditLog.exists().where(
        (AuditLog.action == "config.pull") & (AuditLog.outcome == "failed")
    )


async def test_an_invalid_version_is_refused_and_the_last_good_one_stays(
    settings, master, master_db, agent, box
):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)
    assert (await run(node, agent, box, pinned(master.pin))).outcome == "applied"
    good = await snap.current()

    # A version the master's service would never write: a relay host with a line break, and
    # marked as what the master runs.
    latest = await master_latest(master_db)
    bad = latest["snapshot"]
    bad["sender_domains"][1]["route"] = {
        "host": "smtp.example.net\nrelayhost = evil",
        "port": 25,
        "tls_mode": "may",
        "auth_user": None,
        "auth_password_enc": None,
    }
    await master_db.execute(
        "INSERT INTO config_versions (number, snapshot, checksum, author, comment, created_at) "
        "VALUES ($1, $2, $3, 'mallory', '', now())",
        latest["number"] + 1,
        json.dumps(bad),
        snap.checksum(bad),
    )
    await master_db.execute(
        "UPDATE applied_versions SET number = $1 WHERE node_id = 'a'", latest["number"] + 1
    )

    for _ in range(2):
        result = await run(node, agent, box, pinned(master.pin))
        assert result.outcome == "refused" and not result.ok
        assert "master version 5 is not valid" in result.detail
        assert any("route for example.org" in p for p in result.problems), result.problems
    assert await snap.current() == good
    assert len(await local_versions()) == 1 and agent.applied == [1]
    # Audited once, not once per run.
    failures = await AuditLog.select(AuditLog.target).where(
        (AuditLog.action == "config.pull") & (AuditLog.outcome == "failed")
    )
    assert len(failures) == 1 and failures[0]["target"].startswith("master version 5 of ")


async def test_a_failed_apply_keeps_the_last_good_config(settings, master, master_db, agent, box):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)
    agent.problems = ["postfix check: something is wrong"]

    result = await run(node, agent, box, pinned(master.pin))
    assert result.outcome == "failed"
    assert "master version 4 was not applied" in result.detail
    assert result.problems == ["postfix check: something is wrong"]
    # The stored version was rolled back with the refused apply: tables and versions unchanged.
    assert await local_versions() == [] and await snap.current() == snap.empty()
    assert not await AppliedVersion.exists().where(AppliedVersion.node_id == "b")
    assert await AuditLog.exists().where(
        (AuditLog.action == "config.pull") & (AuditLog.outcome == "failed")
    )

    agent.problems = []
    result = await run(node, agent, box, pinned(master.pin))
    assert result.outcome == "applied", result.detail


async def test_a_draft_on_the_master_never_reaches_the_slave(
    settings, master, master_db, agent, box
):
    master_config(master)  # version 4, applied there
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)
    assert (await run(node, agent, box, pinned(master.pin))).outcome == "applied"

    master_do(master, ["domain", "unapplied.example"])  # version 5: saved, not applied
    result = await run(node, agent, box, pinned(master.pin))
    assert result.outcome == "unchanged" and "master version 4" in result.detail
    assert "unapplied.example" not in [d["name"] for d in (await snap.current())["sender_domains"]]
    assert agent.applied == [1]

    master_do(master, ["apply", []])  # Apply changes on the master: now it is released
    result = await run(node, agent, box, pinned(master.pin))
    assert (result.outcome, result.master_version) == ("applied", 5), result.detail
    assert "unapplied.example" in [d["name"] for d in (await snap.current())["sender_domains"]]


async def test_a_version_whose_apply_failed_on_the_master_does_not_reach_the_slave(
    settings, master, master_db, agent, box
):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)
    assert (await run(node, agent, box, pinned(master.pin))).outcome == "applied"

    [ok] = master_do(
        master, ["network", "198.51.100.0/24"], ["apply", ["postfix check: broken map"]]
    )[-1:]
    assert ok is False
    result = await run(node, agent, box, pinned(master.pin))
    assert result.outcome == "unchanged", result.detail
    assert (await snap.current())["trusted_networks"] == [{"cidr": "192.0.2.0/24", "comment": ""}]
    assert agent.applied == [1]


async def test_the_slave_records_what_the_master_runs_and_is_then_ready(
    settings, master, master_db, agent, box
):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)
    assert not (await configstate.current(node)).ready
    assert (await run(node, agent, box, pinned(master.pin))).outcome == "applied"

    heard = await AppliedVersion.select().where(AppliedVersion.node_id == "a").first()
    assert heard["number"] == 4 and heard["reported_at"] is not None
    state = await configstate.current(node)
    assert state.ready and state.master_applied == 4 and state.differ_seconds is None

    master_do(master, ["network", "198.51.100.0/24"], ["apply", []])  # master now runs 5
    agent.problems = ["postfix check: something is wrong"]
    assert (await run(node, agent, box, pinned(master.pin))).outcome == "failed"
    state = await configstate.current(node)
    assert not state.ready and state.master_applied == 5
    assert state.why_not_ready == "this node runs master version 4, the master runs 5"


async def test_an_apply_the_agent_did_not_answer_is_tried_again_in_the_same_run(
    settings, master, master_db, box, caplog
):
    """An install restarts the agent: the socket is gone for a moment. The run tries again at
    once instead of leaving the slave on its old version until the timer's next run."""
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    caplog.set_level("INFO", logger="mailrelay.config_pull")
    stub = AgentStub()  # its socket appears only after the run's first try

    async def agent_comes_back() -> asyncio.Server:
        await asyncio.sleep(0.3)
        return await asyncio.start_unix_server(stub.handle, path=str(stub.path))

    back = asyncio.create_task(agent_comes_back())
    try:
        result = await run(slave(settings, master.url, token), stub, box, pinned(master.pin))
    finally:
        (await back).close()
        shutil.rmtree(stub.folder, ignore_errors=True)
    assert result.outcome == "applied", result.detail
    assert stub.applied == [1]
    tries = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert tries and "not reachable" in tries[0]


async def test_an_unreachable_master_is_a_clean_failure(settings, agent, box, caplog):
    url = f"https://127.0.0.1:{_free_port()}"
    result = await run(slave(settings, url, "mrt_x"), agent, box, pinned("AB" * 32))
    assert result.outcome == "failed" and not result.ok
    assert result.detail.startswith(f"cannot reach the master at {url}/api/config/export")
    assert await local_versions() == [] and agent.calls == []
    assert not await AuditLog.exists().where(AuditLog.action == "config.pull")


async def test_a_master_that_drips_its_export_is_given_up_on(
    settings, pki, agent, box, monkeypatch
):
    """A byte now and then keeps every read within its timeout: the answer as a whole has one
    (app/cluster/peer.py, ANSWER_SECONDS), or the pull would wait for ever."""
    monkeypatch.setattr(peer, "ANSWER_SECONDS", 1.0)
    export = json.dumps({"version": 1, "padding": "x" * 100}).encode()
    async with TlsServer(pki.stranger_cert, pki.stranger_key, export, drip=0.2) as dripping:
        started = time.monotonic()
        how = pinned(fingerprint(pki.stranger_cert))
        result = await run(slave(settings, dripping.url, "mrt_x"), agent, box, how)
    assert time.monotonic() - started < 10
    assert result.outcome == "failed"
    assert result.detail.startswith(f"no answer from the master at {dripping.url}")
    assert "/api/config/export within 1 s" in result.detail
    assert await local_versions() == [] and agent.calls == []


async def test_a_run_keeps_asking_an_unreachable_master_until_its_time_is_up(
    settings, agent, box, caplog
):
    """A master that restarts must not leave the slave deaf until the next run: within its
    CONFIG_PULL_WAIT_SECONDS a run asks again every FETCH_RETRY_PAUSE, and says so once."""
    caplog.set_level("INFO", logger="mailrelay.config_pull")
    url = f"https://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    node = slave(settings, url, "mrt_x", wait=2 * pull.FETCH_RETRY_PAUSE + 1)
    result = await run(node, agent, box, pinned("AB" * 32))
    assert time.monotonic() - started >= 2 * pull.FETCH_RETRY_PAUSE
    assert result.outcome == "failed" and result.warn
    assert "(3 tries in this run could not reach the master)" in result.detail
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len([w for w in warnings if "trying again every" in w]) == 1


async def test_a_wrong_or_read_only_token_is_refused(settings, master, master_db, agent, box):
    master_config(master)
    [read_token] = master_do(master, ["token", "reader", "read"])
    result = await run(slave(settings, master.url, "mrt_wrong"), agent, box, pinned(master.pin))
    assert result.outcome == "failed"
    assert "the master refused MASTER_API_TOKEN (HTTP 401)" in result.detail
    result = await run(slave(settings, master.url, read_token), agent, box, pinned(master.pin))
    assert result.outcome == "refused"
    assert "MASTER_API_TOKEN must be a cluster token" in result.detail
    assert await local_versions() == []


async def test_two_runs_at_once_apply_once(settings, master, master_db, agent, box):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    node = slave(settings, master.url, token)
    results = await asyncio.gather(*(run(node, agent, box, pinned(master.pin)) for _ in range(3)))
    assert sorted(r.outcome for r in results) == ["applied", "unchanged", "unchanged"]
    assert len(await local_versions()) == 1 and agent.applied == [1]


def test_pull_settings_are_strict(pki):
    digest = bytes.fromhex("ab" * 32)
    colons = ":".join(["AB"] * 32)
    assert master_tls({"MASTER_CERT_FINGERPRINT": colons}).cert_fingerprint == digest
    assert pinned("ab" * 32).cert_fingerprint == digest
    for bad in ("ab" * 31, "zz" * 32, "sha256:" + "ab" * 32):
        with pytest.raises(SettingsError, match="MASTER_CERT_FINGERPRINT"):
            pinned(bad)
    with pytest.raises(SettingsError, match="MASTER_CERT_FINGERPRINT or MASTER_CA_FILE"):
        master_tls({})
    assert master_tls({}, required=False).ca_file is None
    with pytest.raises(SettingsError, match="MASTER_CA_FILE"):
        master_tls({"MASTER_CA_FILE": "/nonexistent/ca.pem"})
    with pytest.raises(SettingsError, match="MASTER_CA_FILE"):
        master_tls({"MASTER_CA_FILE": str(pki.master_key)})


async def _cli_async(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """The CLI in a process while this loop keeps serving the agent stub."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_the_command(settings, master, master_db, agent, box):
    master_config(master)
    [token] = master_do(master, ["token", "slave-b", "cluster"])
    env = os.environ | {
        "CLUSTER_MODE": "slave",
        "NODE_ID": "b",
        "MASTER_API_URL": master.url,
        "MASTER_API_TOKEN": token,
        "AGENT_SOCKET": str(agent.path),
        # One request per run: the job's following of the master is tested above.
        "CONFIG_PULL_WAIT_SECONDS": "0",
    }
    code, out = await _cli_async("config-pull", env=env)
    assert code == 1 and "MASTER_CERT_FINGERPRINT or MASTER_CA_FILE" in out
    assert "Traceback" not in out

    env["MASTER_CERT_FINGERPRINT"] = master.pin
    code, out = await _cli_async("config-pull", env=env)
    assert code == 0, out
    assert "config-pull: applied: master version 4 applied as local version 1" in out
    code, out = await _cli_async("config-pull", env=env)
    assert code == 0 and "config-pull: unchanged" in out, out

    env["MASTER_API_URL"] = f"https://127.0.0.1:{_free_port()}"
    code, out = await _cli_async("config-pull", env=env)
    assert code == 1 and "config-pull: failed: cannot reach the master" in out, out
    assert "Traceback" not in out

    code, out = await _cli_async("config-pull", env=os.environ | {"CLUSTER_MODE": "master"})
    assert code == 0 and "config-pull: skipped" in out, out
