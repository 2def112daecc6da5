"""The shadow milter: at end-of-data, copy the message and its envelope to the peer's shadow
receiver, so that Postfix answers 250 only once the message is on both nodes.

SHADOW_MODE=prefer accepts without a copy when none can be made (peer down, slower than
SHADOW_TIMEOUT_MS, store full) and counts the message as unprotected; `require` answers
451 4.4.0 instead (the client retries); `off` configures no milter at all (see
app/agent/postfix.py: shadow_settings). Postfix talks to it over a unix socket: over TCP
each message waited ~45 ms for Nagle's algorithm against delayed ACKs (measured, README).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import Milter

from app.replication.shadow_client import ShadowClient, ShadowUnavailable
from app.replication.shadow_counters import Counters
from app.replication.shadow_store import Envelope, ShadowFormatError

log = logging.getLogger("mailrelay.shadow.milter")


class Shadowing:
    """What every milter connection shares: the mode, the client to the peer, the counters."""

    def __init__(self, mode: str, client: ShadowClient | None, counters: Counters) -> None:
        self.mode = mode
        self.client = client
        self.counters = counters

    def copy(self, envelope: Envelope, message: bytes) -> str | None:
        """None when the peer has the copy (or mode is off); else why not."""
        if self.mode == "off":
            return None
        try:
            if self.client is None:
                raise ShadowUnavailable("no peer is configured (PEER_NODE_IP, SHADOW_TOKEN)")
            self.client.send(envelope, message)
        except ShadowUnavailable as exc:
            return str(exc)
        return None


@Milter.header_leading_space
class ShadowMilter(Milter.Base):
    shadowing: Shadowing  # set by serve() before libmilter starts

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sender = ""
        self.recipients: list[str] = []
        self.headers: list[bytes] = []
        self.body_chunks: list[bytes] = []

    @Milter.noreply
    def envfrom(self, sender: str, *args: str) -> int:
        self._reset()
        self.sender = sender.strip("<>")
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, recipient: str, *args: str) -> int:
        self.recipients.append(recipient.strip("<>"))
        return Milter.CONTINUE

    @Milter.decode("bytes")
    @Milter.noreply
    def header(self, name: str, value: bytes) -> int:  # type: ignore[override]
        # With header_leading_space the value keeps its leading space and folding.
        self.headers.append(name.encode("utf-8", "surrogateescape") + b":" + value + b"\r\n")
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        self.body_chunks.append(chunk)
        return Milter.CONTINUE

    def eom(self) -> int:
        queue_id = self.getsymval("{i}") or self.getsymval("i") or ""
        # From a macro, not the connect callback: that callback would be one more packet
        # and one more call into Python per message (main.cf.fragment: the macro lists).
        client_address = self.getsymval("{client_addr}") or ""
        envelope_time = time.time()
        # Headers, the line that ends them, the body: the end of the headers is implied, so
        # Postfix is not asked to send it as an event of its own.
        message = b"".join(self.headers) + b"\r\n" + b"".join(self.body_chunks)
        sender, recipients = self.sender, self.recipients
        self._reset()
        try:
            envelope = Envelope.from_dict(
                Envelope(queue_id, sender, recipients, client_address, envelope_time).as_dict()
            )
        except ShadowFormatError as exc:
            problem: str | None = f"cannot copy this message: {exc}"
        else:
            problem = self.shadowing.copy(envelope, message)
        if problem is None:
            return Milter.CONTINUE
        if self.shadowing.mode == "require":
            log.warning("%s: no shadow copy, answered 451: %s", queue_id, problem)
            self.setreply("451", "4.4.0", "No second copy of the message can be made now")
            return Milter.TEMPFAIL
        log.warning("%s: accepted unprotected (no shadow copy): %s", queue_id, problem)
        self.shadowing.counters.unprotected(problem)
        return Milter.CONTINUE


def serve(socket_path: Path, shadowing: Shadowing, timeout: int) -> None:
    """Run the milter until stopped (libmilter's own threads, one per SMTP connection)."""
    ShadowMilter.shadowing = shadowing
    socket_path.unlink(missing_ok=True)
    # The socket is 0666 inside a directory only Postfix (group) and this user may enter.
    os.umask(0)
    Milter.factory = ShadowMilter
    log.info("shadow milter on %s (SHADOW_MODE=%s)", socket_path, shadowing.mode)
    Milter.runmilter("mailrelay-shadow", f"unix:{socket_path}", timeout)
