"""The shadow milter: at end-of-data, copy the message and its envelope to the peer's shadow
receiver, so that Postfix answers 250 only once the message is on both nodes.

SHADOW_MODE=prefer accepts without a copy when none can be made (peer down, slower than
SHADOW_TIMEOUT_MS, store full) and counts the message as unprotected; `require` answers
451 4.4.0 instead (the client retries); `off` configures no milter at all (see
app/agent/postfix.py: shadow_settings). Postfix talks to it over a unix socket: over TCP
each message waited ~45 ms for Nagle's algorithm against delayed ACKs (measured, README).
The protocol is app/replication/milter_protocol.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import socket
from email.utils import formatdate
from pathlib import Path

import uvloop

from app.replication.milter_protocol import Message, MilterConnection
from app.replication.shadow_client import ShadowClient, ShadowUnavailable
from app.replication.shadow_counters import Counters
from app.replication.shadow_store import Envelope, Requests, ShadowFormatError
from app.replication.sync_mark import Moment

log = logging.getLogger("mailrelay.shadow.milter")


class Shadowing:
    """At end-of-data: the copy, and the answer SHADOW_MODE gives when there is none."""

    def __init__(self, mode: str, client: ShadowClient | None, counters: Counters) -> None:
        self.mode = mode
        self.client = client
        self.counters = counters

    async def end_of_message(self, message: Message) -> bytes | None:
        """None lets Postfix answer 250; otherwise the reply it gives instead."""
        if self.mode == "off":
            return None
        queue_id = message.macro("i")
        # Before the copy: a sync mark compares it with the moment before Postfix was held
        # (app/replication/sync_mark.py), on the monotonic clock that no time step moves.
        ended = Moment.now()
        # From a macro, not the connect event: that would be one more packet per connection
        # (main.cf.fragment: the macro lists).
        envelope = Envelope(
            queue_id, message.sender, message.recipients, message.macro("client_addr"),
            ended.wall, Requests.from_esmtp(message.mail_params, message.recipient_params),
            ended.boot, ended.mono,
        )  # fmt: skip
        try:
            envelope = Envelope.from_dict(envelope.as_dict())
            if self.client is None:
                raise ShadowUnavailable("no peer is configured (PEER_NODE_IP, SHADOW_TOKEN)")
            await self.client.send(envelope, first_hop(message, ended.wall) + message.content())
        except ShadowFormatError as exc:
            problem = f"cannot copy this message: {exc}"
        except ShadowUnavailable as exc:
            problem = str(exc)
        else:
            return None
        if self.mode == "require":
            log.warning("%s: no shadow copy, answered 451: %s", queue_id, problem)
            return b"451 4.4.0 No second copy of the message can be made now"
        log.warning("%s: accepted unprotected (no shadow copy): %s", queue_id, problem)
        self.counters.unprotected(problem)
        return None


# What a trace header may hold of a value that came from elsewhere (a DNS name, the client's
# recipient address): no line break or other control character, which could start a header.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def first_hop(message: Message, accepted_at: float) -> bytes:
    """The Received: header this node's Postfix put on the message, as far as a filter can know
    it. Postfix never shows a filter its own Received: header (milter8.c: Sendmail
    compatibility), so without this a message the peer takes over would reach its recipients
    without the hop that says which client handed it in, to which node, under which queue ID.

    Laid out as Postfix writes it (smtpd.c), from macros; what none tells is left out rather
    than guessed: the HELO name, the TLS key exchange, and HELO against EHLO ("with ESMTPS" is
    written only when TLS shows it was ESMTP). The comment after the node's name says that
    this is the shadow's account of the hop.
    """

    def clean(value: str) -> str:
        return _UNPRINTABLE.sub("?", value)

    address = message.macro("client_addr")
    literal = f"IPv6:{address}" if ":" in address else address
    name = message.macro("client_name") or "unknown"
    # No HELO name: no macro carries it, and its event would cost every SMTP session a packet
    # and a wake-up of the milter. The address literal stands where Postfix writes it.
    lines = [f"Received: from [{clean(literal)}] ({clean(name)} [{clean(literal)}])"]
    tls = message.macro("tls_version")
    if tls:
        cipher, bits = message.macro("cipher"), message.macro("cipher_bits")
        lines.append(f"\t(using {clean(tls)} with cipher {clean(cipher)} ({clean(bits)} bits))")
    # Without `j` (a main.cf whose macro lists predate it) the node's name comes from here.
    node = message.macro("j") or socket.gethostname()
    by = (
        f"\tby {clean(node)} (Postfix; as its shadow copy recorded it)"
        f"{' with ESMTPS' if tls else ''} id {clean(message.macro('i'))}"
    )
    date = _date(int(accepted_at))
    if len(message.recipients) == 1:
        lines += [by, f"\tfor <{clean(message.recipients[0])}>; {date}"]
    else:
        lines += [f"{by};", f"\t{date}"]
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    # The same few seconds for every message in them: formatting one took half of the header.
    return formatdate(second, localtime=True)


def serve(socket_path: Path, shadowing: Shadowing) -> None:
    """Run the milter until stopped: one event loop for every Postfix connection."""
    # uvloop: asyncio's own loop and socket transports in Python cost more CPU per message
    # than the copy (README: Shadow copies).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(socket_path, shadowing))


async def _serve(socket_path: Path, shadowing: Shadowing) -> None:
    socket_path.unlink(missing_ok=True)
    # The socket is 0666 inside a directory only Postfix (group) and this user may enter.
    os.umask(0)
    server = await asyncio.get_running_loop().create_unix_server(
        lambda: MilterConnection(shadowing.end_of_message), str(socket_path), backlog=256
    )
    log.info("shadow milter on %s (SHADOW_MODE=%s)", socket_path, shadowing.mode)
    async with server:
        await server.serve_forever()
