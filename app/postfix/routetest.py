"""Test a route: one live SMTP session to the relay host, the way Postfix's SMTP client starts it.

connect, banner, EHLO, STARTTLS (by the route's TLS mode), the server certificate, EHLO again,
AUTH (PLAIN or LOGIN), QUIT. The session never sends MAIL FROM, RCPT TO or DATA: a test delivers
nothing. Each step reports its latency and, on failure, the server's reply or the local error.

TLS modes, as Postfix's smtp_tls_security_level:
  none     no STARTTLS even if offered.
  may      STARTTLS when offered, no certificate check; plaintext when not offered (a note).
  encrypt  STARTTLS required, no certificate check.
  verify   STARTTLS required, and the certificate must verify against the system CA store with
           the relay host's name; the session stops when it does not, as Postfix would.
For `may` and `encrypt` the certificate is still checked, in a second short session after QUIT,
so the operator learns whether a switch to `verify` would work; there a failure is a note.

The password is used for AUTH only, and only inside TLS: without encryption the AUTH step refuses
to send it (even in mode none, where Postfix itself would). It is never part of a step's text, and
any server reply that echoes it (or its base64 form) is masked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography import x509

from app.messages import Message, joined, message_of

T = TypeVar("T")
MAX_REPLY_LINES = 100
MASK = "********"


@dataclass
class Step:
    name: str  # connect | banner | EHLO | STARTTLS | certificate | AUTH | QUIT | verify certificate
    ok: bool
    ms: float
    detail: str = ""
    error: str = ""


@dataclass
class CertificateInfo:
    subject: str
    issuer: str
    sans: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    verified: bool | None = None  # None: not checked
    verify_error: str = ""

    @property
    def expired(self) -> bool:
        return self.not_after < dt.datetime.now(dt.UTC)


@dataclass
class RouteTestReport:
    host: str
    port: int
    tls_mode: str
    auth_user: str | None
    steps: list[Step] = field(default_factory=list)
    certificate: CertificateInfo | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}"


class SMTPReplyError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code


class _Session:
    """A minimal SMTP client on asyncio streams: enough to walk to AUTH, nothing more."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        while len(lines) < MAX_REPLY_LINES:
            raw = await self.reader.readline()
            if not raw:
                raise ConnectionError(Message("the server closed the connection"))
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
                raise ConnectionError(Message("not an SMTP reply: {line!r}", line=line[:120]))
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return int(line[:3]), lines
        raise ConnectionError(Message("the reply is longer than {n} lines", n=MAX_REPLY_LINES))

    async def command(self, text: str) -> tuple[int, list[str]]:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def expect(self, text: str, ok: range = range(200, 300)) -> list[str]:
        code, lines = await self.command(text)
        if code not in ok:
            raise SMTPReplyError(code, " / ".join(lines))
        return lines

    def peer_certificate(self) -> bytes | None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object else None

    def tls_summary(self) -> str:
        ssl_object = self.writer.get_extra_info("ssl_object")
        if not ssl_object:
            return ""
        cipher = ssl_object.cipher()
        return f"{ssl_object.version()}, {cipher[0] if cipher else '?'}"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


def verifying_context() -> ssl.SSLContext:
    """The system CA store, hostname check on: what `verify` means here."""
    return ssl.create_default_context()


def _unverified_context() -> ssl.SSLContext:
    # `may` and `encrypt` encrypt without authenticating the server, as Postfix does.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _extensions(ehlo_lines: list[str]) -> dict[str, str]:
    """EHLO keywords (upper case) and their parameters; the first line is the greeting."""
    offered: dict[str, str] = {}
    for line in ehlo_lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            offered[keyword.upper()] = params.strip()
    return offered


def _name(name: x509.Name) -> str:
    return name.rfc4514_string() or Message("(empty)")


def certificate_info(der: bytes) -> CertificateInfo:
    cert = x509.load_der_x509_certificate(der)
    sans: list[str] = []
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = names.get_values_for_type(x509.DNSName)
        sans += [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return CertificateInfo(
        subject=_name(cert.subject),
        issuer=_name(cert.issuer),
        sans=sans,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Message(
            "certificate verification failed: {reason}",
            reason=exc.verify_message or exc.reason or str(exc),
        )
    if isinstance(exc, TimeoutError):
        return Message("timed out")
    if isinstance(exc, socket.gaierror):
        return Message("cannot resolve the host: {reason}", reason=exc.strerror or str(exc))
    if isinstance(exc, OSError) and exc.errno:
        # asyncio's "Connect call failed ('192.0.2.1', 25)" says less than the errno does.
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return message_of(exc) or type(exc).__name__


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _plain(user: str, password: str) -> str:
    return _b64("\0" + user + "\0" + password)


def _describe(info: CertificateInfo) -> str:
    return Message(
        "subject {subject}; issuer {issuer}; SANs {sans}; valid until {until:%Y-%m-%d %H:%M} UTC",
        subject=info.subject,
        issuer=info.issuer,
        sans=", ".join(info.sans) or Message("none"),
        until=info.not_after,
    )


_STEP_ERRORS = (OSError, TimeoutError, ssl.SSLError, SMTPReplyError, ValueError)


class _RouteTest:
    """One test run: the report it fills and the helpers every step shares."""

    def __init__(
        self,
        report: RouteTestReport,
        auth_password: str,
        timeout: float,
        helo: str,
    ) -> None:
        self.report = report
        self.password = auth_password
        self.timeout = timeout
        self.helo = helo
        # The password as it could come back in a reply: clear, and base64 as PLAIN/LOGIN send it.
        user = report.auth_user or ""
        forms = [auth_password, _b64(auth_password), _plain(user, auth_password)]
        self.secrets = sorted({f for f in forms if auth_password and f}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        if isinstance(text, Message):
            params = text.params.items()
            return Message(
                text.key, **{k: self.scrub(v) if isinstance(v, str) else v for k, v in params}
            )
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def add(self, name: str, ok: bool, ms: float = 0.0, detail: str = "", error: str = "") -> Step:
        step = Step(name, ok, round(ms, 1), self.scrub(detail), self.scrub(error))
        self.report.steps.append(step)
        return step

    async def step(self, name: str, action: Callable[[], Awaitable[T]]) -> tuple[Step, T | None]:
        """Run one step under the timeout; a failure becomes the step's error, never a raise."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                result = await action()
        except _STEP_ERRORS as exc:
            ms = (time.perf_counter() - started) * 1000
            return self.add(name, False, ms, error=_error_text(exc)), None
        return self.add(name, True, (time.perf_counter() - started) * 1000), result

    async def open(self) -> _Session:
        reader, writer = await asyncio.open_connection(self.report.host, self.report.port)
        return _Session(reader, writer)

    async def run(self) -> None:
        step, session = await self.step("connect", self.open)
        if session is None:
            return
        try:
            peer = session.writer.get_extra_info("peername")
            step.detail = (
                Message("connected to {address} port {port}", address=peer[0], port=peer[1])
                if peer
                else Message("connected")
            )
            await self.converse(session)
        finally:
            await session.close()
        if self.report.tls_mode in ("may", "encrypt") and self.report.certificate is not None:
            await self.check_verification()

    async def ehlo(self, session: _Session) -> dict[str, str] | None:
        step, lines = await self.step("EHLO", lambda: session.expect(f"EHLO {self.helo}"))
        if lines is None:
            return None
        offered = _extensions(lines)
        step.detail = ", ".join(f"{k} {v}".strip() for k, v in offered.items()) or Message("none")
        return offered

    async def converse(self, session: _Session) -> None:
        tls_mode = self.report.tls_mode

        async def banner() -> list[str]:
            code, lines = await session.reply()
            if code != 220:
                raise SMTPReplyError(code, " / ".join(lines))
            return lines

        step, lines = await self.step("banner", banner)
        if lines is None:
            return
        step.detail = self.scrub(" / ".join(lines))
        offered = await self.ehlo(session)
        if offered is None:
            return

        encrypted = False
        if tls_mode == "none":
            if "STARTTLS" in offered:
                self.report.notes.append(
                    Message("The server offers STARTTLS, but TLS mode none does not use it.")
                )
        elif "STARTTLS" not in offered:
            if tls_mode != "may":
                self.add(
                    "STARTTLS",
                    False,
                    error=Message(
                        "the server does not offer STARTTLS, which TLS mode {mode} requires: "
                        "Postfix would defer the mail",
                        mode=tls_mode,
                    ),
                )
                return
            self.add("STARTTLS", True, detail=Message("not offered: mail goes out unencrypted"))
            self.report.notes.append(
                Message(
                    "The server does not offer STARTTLS: in TLS mode may, Postfix sends in clear."
                )
            )
        else:
            if not await self.starttls(session):
                return
            encrypted = True
            offered = await self.ehlo(session)
            if offered is None:
                return

        if self.report.auth_user:
            await self.auth(session, offered, encrypted)
        step, lines = await self.step("QUIT", lambda: session.expect("QUIT"))
        if lines is not None:
            step.detail = self.scrub(" / ".join(lines))

    async def starttls(self, session: _Session) -> bool:
        verify = self.report.tls_mode == "verify"
        context = verifying_context() if verify else _unverified_context()

        async def handshake() -> None:
            await session.expect("STARTTLS", range(220, 221))
            await session.writer.start_tls(context, server_hostname=self.report.host)

        step, _ = await self.step("STARTTLS", handshake)
        if not step.ok:
            if verify:
                # Show what the server presents, though the session ends here as Postfix's would.
                await self.show_unverified_certificate(step.error)
            return False
        step.detail = session.tls_summary()
        der = session.peer_certificate()
        try:
            info = certificate_info(der) if der else None
        except ValueError as exc:
            self.add(
                "certificate",
                not verify,
                error=Message("cannot read the certificate: {error}", error=str(exc)),
            )
            return True
        if info is None:
            self.add("certificate", not verify, error=Message("the server sent no certificate"))
        else:
            self.record_certificate(info, verified=True if verify else None)
        return True

    def record_certificate(
        self, info: CertificateInfo, verified: bool | None, verify_error: str = "", ms: float = 0
    ) -> None:
        info.verified, info.verify_error = verified, verify_error
        self.report.certificate = info
        problems = [verify_error] if verify_error else []
        if info.expired:
            problems.append(Message("the certificate has expired"))
        # Only `verify` makes a certificate problem an error; the other modes accept any.
        ok = not (problems and self.report.tls_mode == "verify")
        self.add("certificate", ok, ms, detail=_describe(info), error=joined("; ", problems))

    async def fetch_certificate(self, context: ssl.SSLContext) -> bytes | None:
        """A second short session: banner, EHLO, STARTTLS with `context`, QUIT."""
        session = await self.open()
        try:
            code, lines = await session.reply()
            if code != 220:
                raise SMTPReplyError(code, " / ".join(lines))
            await session.expect(f"EHLO {self.helo}")
            await session.expect("STARTTLS", range(220, 221))
            await session.writer.start_tls(context, server_hostname=self.report.host)
            der = session.peer_certificate()
            with contextlib.suppress(OSError, SMTPReplyError):
                await session.expect("QUIT")
            return der
        finally:
            await session.close()

    async def show_unverified_certificate(self, verify_error: str) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                der = await self.fetch_certificate(_unverified_context())
            info = certificate_info(der) if der else None
        except _STEP_ERRORS:
            return  # the STARTTLS step already says what went wrong
        if info is not None:
            ms = (time.perf_counter() - started) * 1000
            self.record_certificate(info, False, verify_error, ms)

    async def check_verification(self) -> None:
        """`may`/`encrypt`: would `verify` work? A second session with the CA store on."""
        certificate = self.report.certificate
        assert certificate is not None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                await self.fetch_certificate(verifying_context())
        except ssl.SSLCertVerificationError as exc:
            certificate.verified, certificate.verify_error = False, _error_text(exc)
        except _STEP_ERRORS as exc:
            certificate.verify_error = Message("could not check: {error}", error=_error_text(exc))
        else:
            certificate.verified = True
        ms = (time.perf_counter() - started) * 1000
        if certificate.verified:
            self.add(
                "verify certificate",
                True,
                ms,
                detail=Message("verifies against the system CA store"),
            )
            return
        mode = self.report.tls_mode
        self.add(
            "verify certificate",
            True,
            ms,
            detail=Message(
                "{error} (accepted in TLS mode {mode}; verify would fail)",
                error=certificate.verify_error,
                mode=mode,
            ),
        )
        self.report.notes.append(
            Message(
                "The certificate does not verify ({error}): acceptable for TLS mode {mode}, "
                "but TLS mode verify would fail.",
                error=certificate.verify_error,
                mode=mode,
            )
        )

    async def auth(self, session: _Session, offered: dict[str, str], encrypted: bool) -> None:
        user = self.report.auth_user or ""
        if not encrypted:
            why = (
                Message(
                    "not sent: the session is not encrypted; this test never sends a password "
                    "in clear (with TLS mode none, Postfix itself would send it in clear)"
                )
                if self.report.tls_mode == "none"
                else Message(
                    "not sent: the session is not encrypted; this test never sends a password "
                    "in clear"
                )
            )
            self.add("AUTH", False, error=why)
            return
        mechanisms = offered.get("AUTH", "").upper().split()
        mechanism = next((m for m in ("PLAIN", "LOGIN") if m in mechanisms), None)
        if mechanism is None:
            error = (
                Message(
                    "the server offers AUTH {mechanisms}, not PLAIN or LOGIN",
                    mechanisms=" ".join(mechanisms),
                )
                if mechanisms
                else Message("the server does not offer AUTH")
            )
            self.add("AUTH", False, error=error)
            return

        async def authenticate() -> list[str]:
            if mechanism == "PLAIN":
                return await session.expect(f"AUTH PLAIN {_plain(user, self.password)}")
            await session.expect("AUTH LOGIN", range(334, 335))
            await session.expect(_b64(user), range(334, 335))
            return await session.expect(_b64(self.password))

        step, lines = await self.step("AUTH", authenticate)
        step.detail = self.scrub(
            Message(
                "{mechanism} as {user}: {reply}",
                mechanism=mechanism,
                user=user,
                reply=" / ".join(lines),
            )
            if lines
            else Message("{mechanism} as {user}", mechanism=mechanism, user=user)
        )


async def test_route(
    host: str,
    port: int,
    tls_mode: str,
    auth_user: str | None = None,
    auth_password: str | None = None,
    timeout: float = 10.0,
    helo_name: str | None = None,
) -> RouteTestReport:
    """Walk one SMTP session to the relay host as far as AUTH and QUIT; never MAIL FROM."""
    report = RouteTestReport(host, int(port), tls_mode, auth_user or None)
    helo = helo_name or socket.gethostname() or "localhost"
    await _RouteTest(report, auth_password or "", timeout, helo).run()
    return report


# A library function, not a pytest test, whatever its name says.
test_route.__test__ = False  # type: ignore[attr-defined]
