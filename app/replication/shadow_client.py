"""The sending side of shadow copies: hand one message to the peer's shadow receiver over a
pinned TLS connection and wait for its durable-store answer, within a deadline.

Connections are kept open and reused (a pool: one message at a time per connection, as many
connections as messages in flight). Safe to call from libmilter's threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import queue
import socket
import ssl
import time
from dataclasses import dataclass

from app.replication.shadow_receiver import frame
from app.replication.shadow_store import Envelope

POOL_SIZE = 64
# After the peer could not be reached or did not answer in time, messages are not offered to
# it again for this long: each would wait SHADOW_TIMEOUT_MS for nothing (a crashed peer
# answers no SYN), which held every 250 for 2 s after a failover and cut the rate to a few
# messages a second. One message after the pause tries again.
PEER_DOWN_PAUSE = 1.0
# The peer's kernel answers a SYN within a millisecond on a LAN, busy or not; one that has not
# after this long is down (a crash leaves no one to refuse the connection). Without it the
# first message after a takeover waited the whole SHADOW_TIMEOUT_MS before its 250; with 0.25 s
# that wait was half of a takeover at 0.1 s adverts (VIP moved at 0.28 s, 250 at 0.54 s). A
# longer wait buys nothing below 1 s: a SYN that was lost is sent again only after a second.
CONNECT_TIMEOUT = 0.1


class ShadowUnavailable(Exception):
    """No copy was made: the peer is down, too slow, refused it or has no room."""


class _PeerDown(ShadowUnavailable):
    """The peer did not answer (connect, handshake or confirmation timed out or failed)."""


@dataclass
class _Connection:
    sock: ssl.SSLSocket
    reader: object  # the socket's binary file, for line reads

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ShadowClient:
    def __init__(self, host: str, port: int, pin: bytes, token: str, timeout: float) -> None:
        self.address = (host, port)
        self.pin = pin
        self.token = token.encode()
        self.timeout = timeout
        self.idle: queue.LifoQueue[_Connection] = queue.LifoQueue(POOL_SIZE)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The peer's certificate is self-signed: it is compared with the pin right after the
        # handshake, before the token goes out (as app.cluster.peer does for the config pull).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.context = context
        self.paused_until = 0.0

    def send(self, envelope: Envelope, message: bytes) -> None:
        """Return once the peer has the copy on disk; ShadowUnavailable otherwise (at once
        while the peer is paused after it did not answer)."""
        now = time.monotonic()
        if now < self.paused_until:
            raise ShadowUnavailable(
                f"the peer did not answer {PEER_DOWN_PAUSE:g} s ago; not tried again yet"
            )
        try:
            self._send(envelope, message, now + self.timeout)
        except _PeerDown:
            self.paused_until = time.monotonic() + PEER_DOWN_PAUSE
            raise

    def _send(self, envelope: Envelope, message: bytes, deadline: float) -> None:
        data = frame(envelope, message)
        # A pooled connection may have been closed by the peer meanwhile (restart): one retry
        # on a fresh connection, within the same deadline.
        for attempt in (1, 2):
            conn = self._connection(deadline, fresh=attempt == 2)
            try:
                conn.sock.settimeout(_left(deadline))
                conn.sock.sendall(data)
                answer = conn.reader.readline(1024)  # type: ignore[attr-defined]
            except (OSError, ValueError) as exc:
                conn.close()
                if attempt == 2 or isinstance(exc, TimeoutError) or _left(deadline) <= 0:
                    raise _PeerDown(f"the peer did not confirm the copy: {exc}") from None
                continue
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

    def _connection(self, deadline: float, fresh: bool) -> _Connection:
        if not fresh:
            with contextlib.suppress(queue.Empty):
                return self.idle.get_nowait()
        try:
            raw = socket.create_connection(
                self.address, timeout=min(CONNECT_TIMEOUT, _left(deadline))
            )
            # A peer that accepted is alive: its handshake may take what is left.
            raw.settimeout(_left(deadline))
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self.context.wrap_socket(raw)
        except OSError as exc:
            raise _PeerDown(f"cannot reach the peer's shadow receiver: {exc}") from None
        conn = _Connection(sock, sock.makefile("rb"))
        der = sock.getpeercert(binary_form=True) or b""
        if not hmac.compare_digest(hashlib.sha256(der).digest(), self.pin):
            conn.close()
            raise ShadowUnavailable(
                "the peer's certificate is not the pinned PEER_CERT_FINGERPRINT; "
                "the token was not sent"
            )
        try:
            sock.settimeout(_left(deadline))
            sock.sendall(b"HELLO " + self.token + b"\n")
            answer = conn.reader.readline(1024)  # type: ignore[attr-defined]
        except (OSError, ValueError) as exc:
            conn.close()
            raise _PeerDown(f"the peer's shadow receiver did not answer: {exc}") from None
        if answer != b"OK\n":
            conn.close()
            raise ShadowUnavailable("the peer's shadow receiver refused SHADOW_TOKEN")
        return conn

    def _release(self, conn: _Connection) -> None:
        try:
            self.idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                return


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _PeerDown("SHADOW_TIMEOUT_MS passed before the peer confirmed the copy")
    return left
