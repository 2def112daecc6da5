"""The sending side of shadow copies: hand one message to the peer's shadow receiver over a
pinned TLS connection and wait for its durable-store answer, within a deadline.

Connections are kept open and reused (a pool: one message at a time per connection, as many
connections as messages in flight). It runs in the milter's event loop, with no thread of its
own: handing each message to a thread and back cost more than the copy (README).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import time
from collections.abc import Callable
from typing import TypeVar

from app.replication.shadow_receiver import frame
from app.replication.shadow_store import Envelope
from app.tls import matches_pin

POOL_SIZE = 64
# After the peer could not be reached, did not answer in time or could not be trusted (another
# certificate than the pinned one, the token refused), messages are not offered to it again
# for this long: each would wait SHADOW_TIMEOUT_MS for nothing (a crashed peer answers no SYN),
# which held every 250 for 2 s after a failover and cut the rate to a few messages a second,
# or make a TLS handshake bound to fail. One message after the pause tries again.
PEER_DOWN_PAUSE = 1.0
# The peer's kernel answers a SYN within a millisecond on a LAN, busy or not; one that has not
# after this long is down (a crash leaves no one to refuse the connection). Without it the
# first message after a takeover waited the whole SHADOW_TIMEOUT_MS before its 250; with 0.25 s
# that wait was half of a takeover at 0.1 s adverts (VIP moved at 0.28 s, 250 at 0.54 s). A
# longer wait buys nothing below 1 s: a SYN that was lost is sent again only after a second.
CONNECT_TIMEOUT = 0.1
# The receiver's answers are one short line.
LINE_LIMIT = 1024
T = TypeVar("T")


class ShadowUnavailable(Exception):
    """No copy was made: the peer is down, too slow, refused it or has no room."""


class _PeerDown(ShadowUnavailable):
    """No copy can go to the peer for now: it did not answer (connect, handshake or
    confirmation timed out or failed), or it is not the pinned peer or refused the token."""


class _Connection:
    """A TLS socket driven from the event loop without asyncio's TLS transport: a copy is one
    send() and its answer one recv(), where that transport's layers in Python cost more CPU
    than the copy itself (README: Shadow copies)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock

    @classmethod
    async def open(
        cls, host: str, port: int, context: ssl.SSLContext, source: str = ""
    ) -> _Connection:
        """Connected within CONNECT_TIMEOUT, TLS within what the caller's deadline leaves."""
        raw = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if source:
                raw.bind((source, 0))
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await asyncio.get_running_loop().sock_connect(raw, (host, port))
        except BaseException:
            raw.close()
            raise
        conn = cls(context.wrap_socket(raw, do_handshake_on_connect=False))
        try:
            await conn._retry(conn.sock.do_handshake)
        except BaseException:
            conn.close()
            raise
        return conn

    async def exchange(self, data: bytes) -> bytes:
        """Send, and the peer's one-line answer (b"" when it closed the connection)."""
        view = memoryview(data)
        while view:
            sent = await self._retry(functools.partial(self.sock.send, view))
            view = view[sent:]
        answer = b""
        while not answer.endswith(b"\n"):
            if len(answer) > LINE_LIMIT:
                raise ValueError("the peer's answer is longer than a line")
            chunk = await self._retry(functools.partial(self.sock.recv, LINE_LIMIT))
            if not chunk:
                return b""
            answer += chunk
        return answer

    async def _retry(self, step: Callable[[], T]) -> T:
        """`step` once the socket lets it finish (a non-blocking TLS step says what it waits
        for; it is then repeated with the same data, as OpenSSL requires)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return step()
            except ssl.SSLWantReadError:
                add, remove = loop.add_reader, loop.remove_reader
            except (ssl.SSLWantWriteError, BlockingIOError):
                add, remove = loop.add_writer, loop.remove_writer
            ready = loop.create_future()
            add(self.sock.fileno(), _wake, ready)
            try:
                await ready
            finally:
                remove(self.sock.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ShadowClient:
    def __init__(
        self, host: str, port: int, pin: bytes, token: str, timeout: float, source: str = ""
    ) -> None:
        self.host, self.port = host, port
        self.source = source  # the local address to connect from ("": the kernel's choice)
        self.pin = pin
        self.token = token.encode()
        self.timeout = timeout
        self.idle: list[_Connection] = []  # the last one used first: the likeliest still open
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The peer's certificate is self-signed: it is compared with the pin right after the
        # handshake, before the token goes out (as app.cluster.peer does for the config pull).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.context = context
        self.paused_until = 0.0
        self.pause_reason = ""

    async def send(self, envelope: Envelope, message: bytes) -> None:
        """Return once the peer has the copy on disk; ShadowUnavailable otherwise (at once
        while the peer is paused after it did not answer)."""
        if time.monotonic() < self.paused_until:
            raise ShadowUnavailable(
                f"not tried again yet, {PEER_DOWN_PAUSE:g} s after: {self.pause_reason}"
            )
        try:
            async with asyncio.timeout(self.timeout):
                await self._send(frame(envelope, message))
        except TimeoutError:
            self._pause("SHADOW_TIMEOUT_MS passed before the peer confirmed the copy")
            raise _PeerDown(self.pause_reason) from None
        except _PeerDown as exc:
            self._pause(str(exc))
            raise

    def _pause(self, reason: str) -> None:
        self.paused_until = time.monotonic() + PEER_DOWN_PAUSE
        self.pause_reason = reason

    async def _send(self, data: bytes) -> None:
        # A pooled connection may have been closed by the peer meanwhile (restart): one retry
        # on a fresh connection, within the same deadline.
        for attempt in (1, 2):
            conn = await self._connection(fresh=attempt == 2)
            try:
                answer = await conn.exchange(data)
            except (OSError, ValueError) as exc:
                conn.close()
                if attempt == 2:
                    raise _PeerDown(f"the peer did not confirm the copy: {exc}") from None
                continue
            except BaseException:  # the deadline, mid-exchange: the connection is spent
                conn.close()
                raise
            if answer == b"OK\n":
                self._release(conn)
                return
            if not answer:
                conn.close()
                if attempt == 2:
                    raise ShadowUnavailable("the peer closed the connection")
                continue
            if answer.startswith(b"FULL"):
                self._release(conn)
            else:
                conn.close()
            reason = answer.decode(errors="replace").strip()
            raise ShadowUnavailable(f"the peer refused the copy: {reason}")

    async def _connection(self, fresh: bool) -> _Connection:
        if not fresh and self.idle:
            return self.idle.pop()
        try:
            conn = await _Connection.open(self.host, self.port, self.context, self.source)
        except OSError as exc:  # TimeoutError too: the connect timeout, which says nothing
            why = str(exc) or f"no answer within {CONNECT_TIMEOUT:g} s"
            raise _PeerDown(f"cannot reach the peer's shadow receiver: {why}") from None
        try:
            der = conn.sock.getpeercert(binary_form=True) or b""
            if not matches_pin(der, self.pin):
                raise _PeerDown(
                    "the peer's certificate is not the pinned PEER_CERT_FINGERPRINT; "
                    "the token was not sent"
                )
            answer = await conn.exchange(b"HELLO " + self.token + b"\n")
        except (OSError, ValueError) as exc:
            conn.close()
            raise _PeerDown(f"the peer's shadow receiver did not answer: {exc}") from None
        except BaseException:
            conn.close()
            raise
        if answer != b"OK\n":
            conn.close()
            raise _PeerDown("the peer's shadow receiver refused SHADOW_TOKEN")
        return conn

    def _release(self, conn: _Connection) -> None:
        if len(self.idle) < POOL_SIZE:
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():  # the deadline may have cancelled the wait meanwhile
        ready.set_result(None)
