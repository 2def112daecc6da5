"""Calls to the other node's API over HTTPS, its certificate checked before the token is sent.

The nodes call each other: the slave pulls its master's config export and reports what it
applied (MASTER_* settings); a returning node asks its peer which queue IDs the peer took over,
and the dashboard and the switchover read the peer's status (PEER_* settings). Every such call
goes through peer_request: the other node's certificate is checked against a pinned SHA-256
fingerprint (it is typically self-signed) or a CA file, and only then does the bearer token go
out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.messages import Message, message_of
from app.settings import Settings, SettingsError, parse_fingerprint
from app.tls import matches_pin

TIMEOUT_SECONDS = 10.0
# The whole exchange, not each read: a peer that sends a byte now and then would keep its
# caller (a config pull, a reconcile and the mail it holds) waiting for ever. An export of
# MAX_EXPORT_BYTES at a slow link's pace fits.
ANSWER_SECONDS = 60.0


class PeerError(Exception):
    """The other node could not be asked (network, TLS, refused token)."""


class CertificateMismatch(PeerError):
    """The server's certificate is not the pinned one: nothing was sent to it."""


@dataclass(frozen=True)
class PeerTls:
    """How this node recognises the other node's certificate. `who` names the other node in
    messages, with the settings that describe it: "master" (MASTER_*) or "peer" (PEER_*)."""

    cert_fingerprint: bytes | None  # the SHA-256 digest of the certificate (DER)
    ca_file: Path | None
    who: str = "master"

    @property
    def prefix(self) -> str:
        return self.who.upper()

    @classmethod
    def for_master(cls, settings: Settings, required: bool = True) -> PeerTls:
        """The slave's master: MASTER_CERT_FINGERPRINT and MASTER_CA_FILE; on a slave
        (`required`) at least one of them must be set. A bad value is a SettingsError naming the
        variable."""
        digest, ca_file = settings.master_cert_fingerprint, settings.master_ca_file
        if ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise SettingsError(
                    Message(
                        "MASTER_CA_FILE: cannot load {path}: {error}",
                        path=str(ca_file),
                        error=str(exc),
                    )
                ) from None
        if required and digest is None and ca_file is None:
            raise SettingsError(
                Message(
                    "MASTER_CERT_FINGERPRINT or MASTER_CA_FILE is required when "
                    "CLUSTER_MODE=slave (the master's certificate fingerprint, as `mailrelay "
                    "serve` prints it, or the CA that signed it)"
                )
            )
        return cls(cert_fingerprint=digest, ca_file=ca_file)

    def ssl_context(self) -> ssl.SSLContext:
        if self.ca_file is not None:
            # The usual checks: chain to this CA, host name. A pin, if set too, is checked on top.
            return ssl.create_default_context(cafile=str(self.ca_file))
        if self.cert_fingerprint is None:
            raise SettingsError(
                Message(
                    "{prefix}_CERT_FINGERPRINT or {prefix}_CA_FILE is required",
                    prefix=self.prefix,
                )
            )
        # Pinned: the chain and host name are not checked by OpenSSL, because the certificate is
        # typically self-signed; _PinCheck compares it with the pin before any request is sent.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context


@dataclass(frozen=True)
class PeerApi:
    """The peer's API as PEER_API_URL, PEER_API_TOKEN and PEER_CERT_FINGERPRINT describe it (a
    slave's MASTER_* settings stand in for unset ones, see app.settings)."""

    url: str
    token: str
    tls: PeerTls

    @classmethod
    def from_settings(cls, settings: Settings) -> PeerApi:
        """Raises PeerError when the peer is not (or badly) configured: a caller reports that
        like an unreachable peer."""
        url, token, pin = (
            settings.peer_api_url,
            settings.peer_api_token,
            settings.peer_cert_fingerprint,
        )
        if not (url and token and pin):
            raise PeerError(
                Message("PEER_API_URL, PEER_API_TOKEN and PEER_CERT_FINGERPRINT are not all set")
            )
        try:
            digest = parse_fingerprint(pin, "PEER_CERT_FINGERPRINT")
        except SettingsError as exc:
            raise PeerError(message_of(exc)) from None
        return cls(url, token, PeerTls(cert_fingerprint=digest, ca_file=None, who="peer"))


class _PinCheck:
    """An httpcore trace hook: checks the peer certificate right after the TLS handshake, and
    refuses to let request headers (the bearer token) go out on a connection it has not checked.
    """

    def __init__(self, tls: PeerTls) -> None:
        assert tls.cert_fingerprint is not None
        self.pin = tls.cert_fingerprint
        self.tls = tls
        self.checked = False

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.start_tls.complete":
            stream = info["return_value"]
            ssl_object = stream.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            seen = hashlib.sha256(der).digest() if der else b""
            if not (der and matches_pin(der, self.pin)):
                await stream.aclose()
                raise CertificateMismatch(
                    Message(
                        "the server's certificate (SHA-256 {seen}) is not the pinned "
                        "{prefix}_CERT_FINGERPRINT {pin}; the token was not sent",
                        seen=_hex(seen) or "none",
                        prefix=self.tls.prefix,
                        pin=_hex(self.pin),
                    )
                )
            self.checked = True
        elif event.endswith("send_request_headers.started") and not self.checked:
            # Fail closed should httpcore ever stop reporting the handshake to us.
            raise CertificateMismatch(
                Message(
                    "the {who}'s certificate was not checked against the pin; the token was "
                    "not sent",
                    who=_who(self.tls.who),
                )
            )


async def json_object(response: httpx.Response, limit: int, what: str) -> dict[str, Any]:
    """The response's body as a JSON object, read no further than `limit` bytes: the other
    node's answers are untrusted input, and one without end must not fill this one's memory."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise PeerError(Message("{what} is larger than {limit} bytes", what=what, limit=limit))
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        # RecursionError: nested deeper than the parser goes, a few hundred KB of brackets.
        raise PeerError(Message("{what} is not JSON", what=what)) from None
    if not isinstance(parsed, dict):
        raise PeerError(Message("{what} is not a JSON object", what=what))
    return parsed


def _who(who: str) -> Message:
    """The other node as messages name it."""
    return Message("master") if who == "master" else Message("peer")


def _hex(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


@contextlib.asynccontextmanager
async def peer_request(
    url: str,
    token: str,
    tls: PeerTls,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, Any] | None = None,
    wait: float = 0.0,
    timeout: float = TIMEOUT_SECONDS,
    answer_seconds: float | None = None,
) -> AsyncIterator[httpx.Response]:
    """One request to the other node with the bearer token, over HTTPS checked against the pin
    or the CA file before the token is sent: the streamed response (a refused token is a
    PeerError; any other status is the caller's to judge). `timeout` bounds each step,
    `answer_seconds` (ANSWER_SECONDS unless given) the whole exchange including the caller's
    reading of the body; `wait`: how long the other node may hold the answer back (a long
    poll) on top of both."""
    endpoint = url.rstrip("/") + path
    seconds = (ANSWER_SECONDS if answer_seconds is None else answer_seconds) + wait
    try:
        exchange = _request(token, tls, method, endpoint, body, params, wait, timeout)
        async with asyncio.timeout(seconds), exchange as response:
            yield response
    except TimeoutError:
        raise PeerError(
            Message(
                "no answer from the {who} at {endpoint} within {seconds:g} s",
                who=_who(tls.who),
                endpoint=endpoint,
                seconds=seconds,
            )
        ) from None


@contextlib.asynccontextmanager
async def _request(
    token: str,
    tls: PeerTls,
    method: str,
    endpoint: str,
    body: Any,
    params: dict[str, Any] | None,
    wait: float,
    timeout: float,
) -> AsyncIterator[httpx.Response]:
    extensions: dict[str, Any] = {}
    if tls.cert_fingerprint is not None:
        extensions["trace"] = _PinCheck(tls)
    # trust_env=False: no proxy from the environment sits between the two nodes, and no
    # SSL_CERT_FILE widens what is trusted.
    async with httpx.AsyncClient(
        verify=tls.ssl_context(),
        trust_env=False,
        timeout=httpx.Timeout(timeout, read=timeout + wait),
        follow_redirects=False,
    ) as client:
        try:
            async with client.stream(
                method,
                endpoint,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                json=body,
                params=params,
                extensions=extensions,
            ) as response:
                if response.status_code in (401, 403):
                    raise PeerError(
                        Message(
                            "the {who} refused {prefix}_API_TOKEN (HTTP {status})",
                            who=_who(tls.who),
                            prefix=tls.prefix,
                            status=response.status_code,
                        )
                    )
                yield response
        except httpx.HTTPError as exc:
            # httpx's (or the C library's) own English, quoted as it is.
            raise PeerError(
                Message(
                    "cannot reach the {who} at {endpoint}: {error}",
                    who=_who(tls.who),
                    endpoint=endpoint,
                    error=str(exc) or type(exc).__name__,
                )
            ) from None
