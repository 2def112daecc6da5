"""Route tests against real SMTP servers (aiosmtpd on 127.0.0.1, or on addresses a saved route may
point at): plain, STARTTLS with AUTH PLAIN and LOGIN, a self-signed certificate under `verify`, a
closed port; no mail is ever sent."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.postfix import routetest

USER, PASSWORD = "relay-user", "s3cret-Pass!word"


class Handler:
    """Records every SMTP command that would deliver mail: a route test must send none."""

    def __init__(self) -> None:
        self.envelope_commands: list[str] = []

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.envelope_commands.append("MAIL")
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelope_commands.append("DATA")
        return "250 OK"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def relay_addresses() -> Iterator[tuple[str, str]]:
    """Two addresses of this host that are not loopback, for relay targets a saved route may
    point at (127.0.0.1 is refused): on one end of a veth pair of this test run's own, removed
    afterwards. Needs root, like the Postfix tests' namespaces."""
    pid = os.getpid()
    high, low = (pid >> 8) & 127, pid & 255
    addresses = (f"198.19.{high}.{low}", f"198.19.{128 + high}.{low}")
    link = f"mrrt{pid}"
    subprocess.run(
        ["ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p"], check=True
    )
    try:
        for address in addresses:
            subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", link], check=True)
        for end in (link, f"{link}p"):
            subprocess.run(["ip", "link", "set", end, "up"], check=True)
        yield addresses
    finally:
        subprocess.run(["ip", "link", "del", link], check=False)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test.invalid")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def start(handler: Handler, host: str = "127.0.0.1", **kwargs: Any) -> tuple[Controller, int]:
    port = free_port(host)
    controller = Controller(handler, hostname=host, port=port, **kwargs)
    controller.start()
    return controller, port


@pytest.fixture
def plain_server() -> Iterator[tuple[Handler, int]]:
    handler = Handler()
    controller, port = start(handler)
    yield handler, port
    controller.stop()


def authenticator(calls: list[str], reply: str | None = None):
    def check(server, session, envelope, mechanism, auth_data) -> AuthResult:
        calls.append(mechanism)
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == USER
            and auth_data.password.decode() == PASSWORD
        )
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        # handled=False: aiosmtpd sends `reply`, or its own 535, itself.
        return AuthResult(success=False, handled=False, message=reply)

    return check


def tls_server(
    tls_files, calls: list[str], host: str = "127.0.0.1", **kwargs: Any
) -> tuple[Controller, Handler, int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    handler = Handler()
    options: dict[str, Any] = {
        "tls_context": context,
        "require_starttls": True,
        "auth_required": True,
        "authenticator": authenticator(calls),
    }
    options.update(kwargs)
    controller, port = start(handler, host, **options)
    return controller, handler, port


@pytest.fixture
def starttls_server(tls_files) -> Iterator[tuple[Handler, int, list[str]]]:
    calls: list[str] = []
    controller, handler, port = tls_server(tls_files, calls)
    yield handler, port, calls
    controller.stop()


def steps(report: routetest.RouteTestReport) -> dict[str, routetest.Step]:
    """The last step of each name (EHLO runs twice with STARTTLS)."""
    return {step.name: step for step in report.steps}


def names(report: routetest.RouteTestReport) -> list[str]:
    return [step.name for step in report.steps]


async def test_it_walks_a_plain_server_without_tls(plain_server) -> None:
    handler, port = plain_server
    report = await routetest.test_route("127.0.0.1", port, "none", timeout=5)
    assert names(report) == ["connect", "banner", "EHLO", "QUIT"]
    assert report.ok
    assert all(step.ms >= 0 for step in report.steps)
    assert "Python SMTP" in steps(report)["banner"].detail
    assert "SIZE" in steps(report)["EHLO"].detail
    assert handler.envelope_commands == []


async def test_encrypt_fails_clearly_without_starttls(plain_server) -> None:
    _, port = plain_server
    report = await routetest.test_route("127.0.0.1", port, "encrypt", timeout=5)
    assert not report.ok
    starttls = steps(report)["STARTTLS"]
    assert not starttls.ok
    assert "does not offer STARTTLS" in starttls.error
    assert "encrypt" in starttls.error
    assert "AUTH" not in names(report)


async def test_may_without_starttls_is_a_note(plain_server) -> None:
    _, port = plain_server
    report = await routetest.test_route("127.0.0.1", port, "may", timeout=5)
    assert report.ok
    assert "not offered" in steps(report)["STARTTLS"].detail
    assert any("sends in clear" in note for note in report.notes)


async def test_no_password_goes_out_in_clear(tls_files) -> None:
    calls: list[str] = []
    # A server that offers AUTH without TLS: the test must still not send the password.
    controller, handler, port = tls_server(
        tls_files, calls, require_starttls=False, auth_require_tls=False, auth_required=False
    )
    try:
        report = await routetest.test_route(
            "127.0.0.1", port, "none", auth_user=USER, auth_password=PASSWORD, timeout=5
        )
    finally:
        controller.stop()
    auth = steps(report)["AUTH"]
    assert not auth.ok
    assert "not encrypted" in auth.error
    assert "TLS mode none" in auth.error
    assert calls == []
    assert handler.envelope_commands == []
    assert steps(report)["QUIT"].ok


async def test_starttls_and_auth_plain_with_the_right_password(starttls_server) -> None:
    handler, port, calls = starttls_server
    report = await routetest.test_route(
        "127.0.0.1", port, "encrypt", auth_user=USER, auth_password=PASSWORD, timeout=5
    )
    assert names(report) == [
        "connect",
        "banner",
        "EHLO",
        "STARTTLS",
        "certificate",
        "EHLO",
        "AUTH",
        "QUIT",
        "verify certificate",
    ]
    assert report.ok, report.steps
    assert calls == ["PLAIN"]
    by_name = steps(report)
    assert by_name["STARTTLS"].detail.startswith("TLSv1.")
    assert by_name["AUTH"].detail.startswith(f"PLAIN as {USER}")
    assert "235" not in by_name["AUTH"].error
    cert = report.certificate
    assert cert is not None
    assert cert.subject == "CN=relay.test.invalid"
    assert cert.issuer == "CN=relay.test.invalid"
    assert cert.sans == ["localhost", "127.0.0.1"]
    assert cert.not_after > dt.datetime.now(dt.UTC) + dt.timedelta(days=29)
    assert "CN=relay.test.invalid" in by_name["certificate"].detail
    assert "valid until" in by_name["certificate"].detail
    # Self-signed: fine for `encrypt`, but the operator learns that `verify` would fail.
    assert cert.verified is False
    assert by_name["verify certificate"].ok
    assert any("TLS mode verify would fail" in note for note in report.notes)
    assert handler.envelope_commands == []
    assert PASSWORD not in repr(report)


async def test_auth_login_when_plain_is_not_offered(tls_files) -> None:
    calls: list[str] = []
    controller, _, port = tls_server(tls_files, calls, auth_exclude_mechanism=["PLAIN"])
    try:
        report = await routetest.test_route(
            "127.0.0.1", port, "may", auth_user=USER, auth_password=PASSWORD, timeout=5
        )
    finally:
        controller.stop()
    assert report.ok, report.steps
    assert calls == ["LOGIN"]
    assert steps(report)["AUTH"].detail.startswith(f"LOGIN as {USER}")


async def test_a_wrong_password_fails_with_the_servers_reply(starttls_server) -> None:
    _, port, calls = starttls_server
    report = await routetest.test_route(
        "127.0.0.1", port, "encrypt", auth_user=USER, auth_password="wrong", timeout=5
    )
    auth = steps(report)["AUTH"]
    assert calls == ["PLAIN"]
    assert not auth.ok
    assert auth.error.startswith("535")
    assert "Authentication credentials invalid" in auth.error
    assert not report.ok
    assert steps(report)["QUIT"].ok  # the session still ends politely


async def test_a_reply_that_echoes_the_password_is_masked(tls_files) -> None:
    calls: list[str] = []
    wrong = "Echo-Me-123"
    reply = f"535 5.7.8 no such password: {wrong}"
    controller, _, port = tls_server(tls_files, calls, authenticator=authenticator(calls, reply))
    try:
        report = await routetest.test_route(
            "127.0.0.1", port, "encrypt", auth_user=USER, auth_password=wrong, timeout=5
        )
    finally:
        controller.stop()
    auth = steps(report)["AUTH"]
    assert not auth.ok
    assert wrong not in repr(report)
    assert "no such password: ********" in auth.error


async def test_verify_reports_a_self_signed_certificate_as_an_error(starttls_server) -> None:
    handler, port, calls = starttls_server
    report = await routetest.test_route(
        "127.0.0.1", port, "verify", auth_user=USER, auth_password=PASSWORD, timeout=5
    )
    assert not report.ok
    by_name = steps(report)
    assert not by_name["STARTTLS"].ok
    assert "certificate verification failed" in by_name["STARTTLS"].error
    assert "self-signed" in by_name["STARTTLS"].error
    certificate = by_name["certificate"]
    assert not certificate.ok
    assert "CN=relay.test.invalid" in certificate.detail
    assert "self-signed" in certificate.error
    assert report.certificate is not None and report.certificate.verified is False
    # As Postfix would, the session stops: no credentials go to an unverified server.
    assert "AUTH" not in by_name
    assert calls == []
    assert handler.envelope_commands == []


async def test_a_closed_port_fails_at_connect_with_its_latency() -> None:
    port = free_port()  # bound and released: nothing listens there now
    report = await routetest.test_route("127.0.0.1", port, "may", timeout=5)
    assert names(report) == ["connect"]
    connect = report.steps[0]
    assert not connect.ok
    assert "refused" in connect.error.lower()
    assert connect.ms >= 0
    assert not report.ok
