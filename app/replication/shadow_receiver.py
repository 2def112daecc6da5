"""The shadow receiver: takes the peer's shadow copies over TLS and stores them durably, and
prunes them once a queue sync has put them in this node's replica.

Wire protocol (one TLS connection carries any number of messages, one at a time; the sender
keeps several connections open for messages in flight): the client sends `HELLO <token>\\n`
and gets `OK\\n`; then per message a 4-byte big-endian length, that many bytes of JSON
envelope with `size`, and `size` bytes of message; the answer is `OK\\n` once the copy is on
disk (file and directory fsync'ed), `FULL <why>\\n` when the store has no room, `NO <why>\\n`
for anything malformed (the connection is then closed).

The client checks this server's certificate against its pin (the node certificate, as the
config pull does); this server checks the shared SHADOW_TOKEN before it reads a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import ssl
import struct
from pathlib import Path

from app.replication.shadow_store import Envelope, ShadowFormatError, ShadowStore, StoreFull

log = logging.getLogger("mailrelay.shadow.receiver")
HELLO_TIMEOUT = 5.0
MAX_HEADER = 1024 * 1024
# A sync's marker in the replica: the snapshot's time (the peer's clock), see
# app/agent/queuesync.py.
MARKER_NAME = "shadow-prune-before"
# Between a shadow's end-of-data time and its queue file's commit on the peer lie the copy
# (at most SHADOW_TIMEOUT_MS) and cleanup's own fsync: shadows younger than the snapshot by
# less than this may not be in it yet, and are kept until the next sync.
PRUNE_MARGIN_SECONDS = 10.0


def frame(envelope: Envelope, message: bytes) -> bytes:
    header = json.dumps(envelope.as_dict() | {"size": len(message)}).encode()
    return struct.pack(">I", len(header)) + header + message


class Receiver:
    def __init__(
        self, store: ShadowStore, token: str, max_message_bytes: int, marker: Path | None
    ) -> None:
        self.store = store
        self.token = token.encode()
        self.max_message_bytes = max_message_bytes
        self.marker = marker
        self.pruned_before = 0.0

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        try:
            line = await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT)
            word, _, token = line.rstrip(b"\n").partition(b" ")
            if word != b"HELLO" or not hmac.compare_digest(token, self.token):
                log.warning("shadow connection from %s refused: wrong token", peer)
                writer.write(b"NO wrong token\n")
                return
            writer.write(b"OK\n")
            await writer.drain()
            while await self._one(reader, writer):
                pass
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            raw_length = await reader.readexactly(4)
        except asyncio.IncompleteReadError:
            return False  # the client closed between messages
        (length,) = struct.unpack(">I", raw_length)
        if length > MAX_HEADER:
            writer.write(b"NO envelope too large\n")
            return False
        try:
            header = json.loads(await reader.readexactly(length))
            envelope = Envelope.from_dict(header)
            size = header.get("size")
        except (ValueError, ShadowFormatError) as exc:
            writer.write(f"NO {exc}\n".encode())
            return False
        if not isinstance(size, int) or not 0 <= size <= self.max_message_bytes:
            writer.write(f"NO size must be 0-{self.max_message_bytes}\n".encode())
            return False
        message = await reader.readexactly(size)
        try:
            await asyncio.to_thread(self.store.put, envelope, message)
        except StoreFull as exc:
            log.warning("shadow of %s refused: %s", envelope.queue_id, exc)
            writer.write(f"FULL {exc}\n".encode())
        except OSError as exc:
            log.error("shadow of %s not stored: %s", envelope.queue_id, exc)
            writer.write(f"FULL cannot store: {exc.strerror}\n".encode())
        else:
            writer.write(b"OK\n")
        await writer.drain()
        return True

    def prune_once(self) -> int:
        """Drop the shadows the last successful sync covers (its marker in the replica)."""
        if self.marker is None:
            return 0
        try:
            before = float(self.marker.read_text().strip())
        except (OSError, ValueError):
            return 0
        if before <= self.pruned_before:
            return 0
        self.pruned_before = before
        dropped = self.store.prune(before - PRUNE_MARGIN_SECONDS)
        if dropped:
            log.info("pruned %d shadows older than the peer's snapshot at %.3f", dropped, before)
        return dropped

    async def prune_forever(self, interval: float = 1.0) -> None:
        while True:
            try:
                await asyncio.to_thread(self.prune_once)
            except OSError as exc:
                log.error("pruning the shadow store failed: %s", exc)
            await asyncio.sleep(interval)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


async def serve(receiver: Receiver, host: str, port: int, context: ssl.SSLContext) -> None:
    server = await asyncio.start_server(
        receiver.serve_connection, host, port, ssl=context, limit=MAX_HEADER
    )
    log.info("shadow receiver listening on %s:%d, store %s", host, port, receiver.store.root)
    pruning = asyncio.create_task(receiver.prune_forever())
    try:
        async with server:
            await server.serve_forever()
    finally:
        pruning.cancel()
