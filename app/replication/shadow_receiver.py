"""The shadow receiver: takes the peer's shadow copies over TLS and stores them durably, and
prunes them once a queue sync has put them in this node's replica.

Wire protocol (one TLS connection carries any number of messages, one at a time; the sender
keeps several connections open for messages in flight): the client sends `HELLO <token>\\n`
and gets `OK\\n`; then per message a 4-byte big-endian length, that many bytes of JSON
envelope with `size`, and `size` bytes of message; the answer is `OK\\n` once the copy is on
disk (its record fdatasync'ed in a segment), `FULL <why>\\n` when the store has no room,
`NO <why>\\n` for anything malformed (the connection is then closed).

The client checks this server's certificate against its pin (the node certificate, as the
config pull does); this server checks the shared SHADOW_TOKEN before it reads a message.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import ipaddress
import json
import logging
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

from app.replication import sync_mark
from app.replication.shadow_store import (
    Envelope,
    ShadowFormatError,
    ShadowStore,
    StoreFull,
    sync_filesystem,
)

log = logging.getLogger("mailrelay.shadow.receiver")
HELLO_TIMEOUT = 5.0
# An authenticated connection that carries nothing for this long is closed; the sender's
# pool opens a fresh one (it retries once on a closed connection).
IDLE_TIMEOUT = 300.0
# Each connection has its own thread: this many at once, more are closed at once.
MAX_CONNECTIONS = 256
MAX_HEADER = 1024 * 1024


class _Refused(Exception):
    """The peer sent something malformed: answered NO, the connection closes."""


def frame(envelope: Envelope, message: bytes) -> bytes:
    header = json.dumps(envelope.as_dict() | {"size": len(message)}).encode()
    return struct.pack(">I", len(header)) + header + message


class Receiver:
    """Blocking sockets, a thread per connection: per message this costs about half the CPU
    of an asyncio server with its TLS in Python (measured in the lab, README), and the
    store's fsyncs need a thread anyway."""

    def __init__(
        self,
        store: ShadowStore,
        token: str,
        max_message_bytes: int,
        marker: Path | None,
        copy_timeout: float = 2.0,
    ) -> None:
        self.store = store
        self.copy_timeout = copy_timeout
        self.token = token.encode()
        self.max_message_bytes = max_message_bytes
        self.marker = marker

    def serve_connection(self, raw: socket.socket, context: ssl.SSLContext) -> None:
        """One peer connection, from the TLS handshake to its close."""
        deadline: _Deadline | None = None
        try:
            # Inside the try: a client gone already must not leak the socket.
            peer = raw.getpeername()
            raw.settimeout(HELLO_TIMEOUT)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The timeout is per read: a client that sends a byte every few seconds would keep
            # its slot for ever without showing the token. HELLO_TIMEOUT is for all of it.
            deadline = _Deadline(raw, HELLO_TIMEOUT)
            with context.wrap_socket(raw, server_side=True) as sock:
                reader = sock.makefile("rb")
                word, _, token = reader.readline(1024).rstrip(b"\n").partition(b" ")
                if word != b"HELLO" or not hmac.compare_digest(token, self.token):
                    log.warning("shadow connection from %s refused: wrong token", peer)
                    sock.sendall(b"NO wrong token\n")
                    return
                deadline.cancel()
                sock.sendall(b"OK\n")
                sock.settimeout(IDLE_TIMEOUT)
                while True:
                    try:
                        answer = self._one(reader)
                    except _Refused as exc:
                        sock.sendall(f"NO {exc}\n".encode())
                        return
                    if answer is None:
                        return
                    sock.sendall(answer)
        except (OSError, ssl.SSLError):
            pass  # the peer went away or timed out: nothing was acknowledged
        finally:
            if deadline is not None:
                deadline.cancel()
            raw.close()

    def _one(self, reader: io.BufferedReader) -> bytes | None:
        """Read and store one message; its answer, or None when the peer closed."""
        raw_length = reader.read(4)
        if not raw_length:
            return None  # the client closed between messages
        if len(raw_length) < 4:
            raise OSError("the peer closed the connection mid-message")
        (length,) = struct.unpack(">I", raw_length)
        if length > MAX_HEADER:
            raise _Refused("envelope too large")
        try:
            header = json.loads(_exactly(reader, length))
            envelope = Envelope.from_dict(header)
            size = header.get("size")
        except (ValueError, RecursionError, ShadowFormatError) as exc:
            # RecursionError: JSON nested deeper than the parser goes.
            raise _Refused(str(exc)[:200]) from None
        if not isinstance(size, int) or not 0 <= size <= self.max_message_bytes:
            raise _Refused(f"size must be 0-{self.max_message_bytes}")
        message = _exactly(reader, size)
        try:
            self.store.put(envelope, message)
        except StoreFull as exc:
            log.warning("shadow of %s refused: %s", envelope.queue_id, exc)
            return f"FULL {exc}\n".encode()
        except OSError as exc:
            log.error("shadow of %s not stored: %s", envelope.queue_id, exc)
            return f"FULL cannot store: {exc.strerror}\n".encode()
        return b"OK\n"

    def prune_once(self) -> int:
        """Drop the shadows the last successful sync covers (its mark in the replica)."""
        if self.marker is None:
            return 0
        coverage = sync_mark.read(self.marker, self.copy_timeout)
        if coverage is None:
            self.store.close_old(time.monotonic())
            return 0
        marker = self.marker
        dropped = self.store.prune(coverage, lambda: sync_filesystem(marker))
        if dropped:
            log.debug("pruned %d shadows the peer's last sync covers", dropped)
        return dropped

    def prune_forever(self, interval: float = 1.0) -> None:
        while True:
            try:
                self.prune_once()
            except OSError as exc:
                log.error("pruning the shadow store failed: %s", exc)
            time.sleep(interval)


class _Deadline:
    """Ends a connection that is still open after `seconds`: shutdown() through a duplicate of
    its descriptor ends it for every descriptor (the TLS socket takes over the original)."""

    def __init__(self, raw: socket.socket, seconds: float) -> None:
        self._twin: socket.socket | None = raw.dup()
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        with self._lock:
            if self._twin is not None:
                with contextlib.suppress(OSError):
                    self._twin.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            if self._twin is not None:
                self._twin.close()
                self._twin = None


def _exactly(reader: io.BufferedReader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise OSError("the peer closed the connection mid-message")
    return data


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def listen(host: str, port: int) -> socket.socket:
    return socket.create_server((host, port), backlog=128, reuse_port=False)


def serve(
    receiver: Receiver,
    listener: socket.socket,
    context: ssl.SSLContext,
    prune: bool = True,
    peer: str | None = None,
) -> None:
    """Accept connections until the listener is closed, each in its own thread; with `peer`
    (its node address, PEER_NODE_IP) only from there: no one else can take the slots the
    peer's connections need, not even for the seconds a TLS handshake and a token take."""
    host, port = listener.getsockname()[:2]
    log.info("shadow receiver listening on %s:%d, store %s", host, port, receiver.store.root)
    if prune:
        threading.Thread(target=receiver.prune_forever, daemon=True).start()
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    only = ipaddress.ip_address(peer) if peer else None
    strangers = 0
    while True:
        try:
            raw, address = listener.accept()
        except OSError:
            return  # closed: the service stops
        if only is not None and ipaddress.ip_address(address[0]) != only:
            strangers += 1
            if strangers % 1000 == 1:  # a flood must not flood the journal too
                log.warning(
                    "shadow connection from %s closed: only the peer %s may connect (%d so far)",
                    address[0],
                    only,
                    strangers,
                )
            raw.close()
            continue
        if not slots.acquire(blocking=False):
            log.warning(
                "shadow connection from %s closed: %d open already", address, MAX_CONNECTIONS
            )
            raw.close()
            continue

        def run(raw: socket.socket = raw) -> None:
            try:
                receiver.serve_connection(raw, context)
            finally:
                slots.release()

        threading.Thread(target=run, daemon=True).start()
