"""The filter side of the Sendmail milter protocol (version 6), as Postfix speaks it: only what
a filter that copies messages and changes nothing needs, served from one event loop (uvloop's in
the service: app/replication/shadow_milter.py).

Why not libmilter (pymilter): it serves each Postfix connection from a thread of its own that
waits in poll() for every packet, about 20 a message, and takes the GIL for each event; on two
shared cores that scheduling was most of the milter's cost (README: Shadow copies). Here one
event loop reads whatever packets have arrived on any connection in one go.

Postfix is trusted no more than it must be: a packet longer than MAX_PACKET, an unknown
command or a malformed negotiation closes the connection, and Postfix then applies
milter_default_action.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

log = logging.getLogger("mailrelay.shadow.milter")

VERSION = 6
# A body chunk is at most 65,535 bytes (Postfix and libmilter alike); one header may be longer
# (Postfix's header_size_limit, 102,400 by default) but not a megabyte.
MAX_PACKET = 1 << 20

# Protocol steps the filter asks Postfix to leave out (SMFIP_NO*) or not to wait for an answer
# to (SMFIP_NR_*): the envelope, headers and body flow without a round trip each.
NO_CONNECT = 0x01
NO_HELO = 0x02
NO_EOH = 0x40
NO_UNKNOWN = 0x100
NO_DATA = 0x200
NR_HDR = 0x80
NR_CONN = 0x1000
NR_HELO = 0x2000
NR_MAIL = 0x4000
NR_RCPT = 0x8000
NR_DATA = 0x10000
NR_UNKN = 0x20000
NR_EOH = 0x40000
NR_BODY = 0x80000
HDR_LEADSPC = 0x100000
WANTED = (
    NO_CONNECT | NO_HELO | NO_EOH | NO_UNKNOWN | NO_DATA | HDR_LEADSPC
    | NR_HDR | NR_CONN | NR_HELO | NR_MAIL | NR_RCPT | NR_DATA | NR_UNKN | NR_EOH | NR_BODY
)  # fmt: skip

# Events and the flag that spares their answer; such an event is otherwise answered "continue".
NO_REPLY_FLAG = {
    ord("C"): NR_CONN, ord("H"): NR_HELO, ord("M"): NR_MAIL, ord("R"): NR_RCPT,
    ord("T"): NR_DATA, ord("U"): NR_UNKN, ord("L"): NR_HDR, ord("N"): NR_EOH, ord("B"): NR_BODY,
}  # fmt: skip
MACRO = ord("D")
# Macros of the connection and HELO stages hold for every message of the connection.
CONNECTION_STAGES = (ord("C"), ord("H"))
LENGTH = struct.Struct(">I")


@dataclass
class Message:
    """One mail transaction as the filter sees it at end-of-data."""

    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    # The ESMTP parameters of MAIL FROM, and of each RCPT TO in the order of `recipients`.
    mail_params: list[str] = field(default_factory=list)
    recipient_params: list[list[str]] = field(default_factory=list)
    headers: list[bytes] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    macros: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        """Headers, the empty line that ends them, the body: the message as the client sent
        it (end-of-header is implied, so Postfix is not asked to send it as an event)."""
        return b"".join(self.headers) + b"\r\n" + b"".join(self.body)

    def macro(self, name: str) -> str:
        return self.macros.get(f"{{{name}}}") or self.macros.get(name) or ""


# At end-of-data: None to let Postfix go on (250), else the SMTP reply to give instead, such as
# b"451 4.4.0 text".
EndOfMessage = Callable[[Message], Awaitable[bytes | None]]


class ProtocolError(Exception):
    """Postfix sent what this filter cannot take: the connection is closed."""


def packet(command: bytes, data: bytes = b"") -> bytes:
    return LENGTH.pack(len(data) + 1) + command + data


CONTINUE_PACKET = packet(b"c")


def _strings(data: bytes) -> list[str]:
    """NUL-terminated strings, as the protocol sends addresses and macros."""
    return [s.decode("utf-8", "surrogateescape") for s in data.split(b"\0")[:-1]]


def _address(data: bytes) -> tuple[str, list[str]]:
    """An envelope address and the ESMTP parameters given with it."""
    args = _strings(data)
    if not args:
        raise ProtocolError("an envelope address without its terminating NUL")
    return args[0].strip("<>"), args[1:]


class MilterConnection(asyncio.Protocol):
    """One connection from Postfix (smtpd, then the cleanup server it hands over to)."""

    def __init__(self, end_of_message: EndOfMessage) -> None:
        self.end_of_message = end_of_message
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.protocol = 0  # the steps agreed at negotiation
        # Each stage's macros as Postfix last sent them; those of a transaction's stages are
        # forgotten with it, so a message never carries the queue ID of the one before.
        self.macros: dict[int, dict[str, str]] = {}
        self.message = Message()
        self.waiting: asyncio.Task[None] | None = None  # the copy of a message in flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            if self.waiting is not None and len(self.buffer) > MAX_PACKET:
                # Postfix waits for the answer to end-of-data before it sends anything more.
                raise ProtocolError("more than a packet sent while a message's copy was made")
            self._process()
        except ProtocolError as exc:
            log.warning("closing a connection from Postfix: %s", exc)
            self._close()

    def _process(self) -> None:
        """Handle every whole packet in the buffer; stop at a message's end until its copy is
        answered (Postfix sends nothing more on this connection meanwhile)."""
        start = 0
        buffer = self.buffer
        while self.waiting is None and self.transport is not None and len(buffer) - start >= 4:
            (length,) = LENGTH.unpack_from(buffer, start)
            if not 0 < length <= MAX_PACKET:
                raise ProtocolError(f"a packet of {length} bytes (at most {MAX_PACKET})")
            if len(buffer) - start - 4 < length:
                break
            command = buffer[start + 4]
            if command == MACRO and length == 2:
                # Postfix sends each event's macros even when the list is empty: about half
                # of the packets, so they take the short way.
                self.macros.pop(buffer[start + 5], None)
                start += 6
                continue
            data = bytes(buffer[start + 5 : start + 4 + length])
            start += 4 + length
            handler = HANDLERS.get(command)
            if handler is None:
                raise ProtocolError(f"unknown command {chr(command)!r}")
            handler(self, data)
            flag = NO_REPLY_FLAG.get(command)
            if flag is not None and not self.protocol & flag:
                self._send(CONTINUE_PACKET)
        del buffer[:start]

    def _macros(self, data: bytes) -> None:
        if not data:
            raise ProtocolError("a macro packet without its stage")
        pairs = _strings(data[1:])
        self.macros[data[0]] = dict(zip(pairs[::2], pairs[1::2], strict=False))

    def _header(self, data: bytes) -> None:
        name, sep, value = data.partition(b"\0")
        if not sep or not value.endswith(b"\0"):
            raise ProtocolError("a header without its terminating NULs")
        # With HDR_LEADSPC the value keeps its leading space and its folding.
        colon = b":" if self.protocol & HDR_LEADSPC else b": "
        self.message.headers.append(name + colon + value[:-1] + b"\r\n")

    def _body(self, data: bytes) -> None:
        self.message.body.append(data)

    def _mail(self, data: bytes) -> None:
        sender, params = _address(data)
        self.message = Message(sender=sender, mail_params=params)

    def _recipient(self, data: bytes) -> None:
        recipient, params = _address(data)
        self.message.recipients.append(recipient)
        self.message.recipient_params.append(params)

    def _event(self, data: bytes) -> None:
        """An event this filter has no use for (answered when Postfix waits for it)."""

    def _abort(self, data: bytes) -> None:
        self._next_transaction()

    def _quit_keep_connection(self, data: bytes) -> None:
        self.macros = {}
        self.message = Message()

    def _quit(self, data: bytes) -> None:
        self._close()

    def _negotiate(self, data: bytes) -> None:
        if len(data) < 12:
            raise ProtocolError("a negotiation shorter than 12 bytes")
        version, _actions, offered = struct.unpack_from(">III", data)
        if version < 2:
            raise ProtocolError(f"milter protocol version {version}")
        # Only steps Postfix offered may be left out; the filter changes nothing (actions 0).
        self.protocol = WANTED & offered
        self._send(packet(b"O", struct.pack(">III", min(version, VERSION), 0, self.protocol)))

    def _end_of_message(self, data: bytes) -> None:
        message = self.message
        if data:
            message.body.append(data)
        for stage in self.macros.values():
            message.macros |= stage
        self._next_transaction()
        self.waiting = asyncio.get_running_loop().create_task(self._answer(message))

    def _next_transaction(self) -> None:
        self.message = Message()
        self.macros = {s: m for s, m in self.macros.items() if s in CONNECTION_STAGES}

    async def _answer(self, message: Message) -> None:
        try:
            reply = await self.end_of_message(message)
        except Exception:
            # Postfix then applies milter_default_action (SHADOW_MODE: accept or 451).
            log.exception("closing a connection from Postfix: the message's copy failed")
            self._close()
            return
        finally:
            self.waiting = None
        # b"y": a reply code of the filter's own; Postfix gives it to the client as it is.
        self._send(CONTINUE_PACKET if reply is None else packet(b"y", reply + b"\0"))
        if self.transport is not None and self.buffer:
            self.data_received(b"")

    def _send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None  # what is still in the buffer is not read


# The commands Postfix sends, by their code.
HANDLERS: dict[int, Callable[[MilterConnection, bytes], None]] = {
    ord("D"): MilterConnection._macros,
    ord("L"): MilterConnection._header,
    ord("B"): MilterConnection._body,
    ord("M"): MilterConnection._mail,
    ord("R"): MilterConnection._recipient,
    ord("E"): MilterConnection._end_of_message,
    ord("O"): MilterConnection._negotiate,
    ord("A"): MilterConnection._abort,
    ord("K"): MilterConnection._quit_keep_connection,
    ord("Q"): MilterConnection._quit,
    **{command: MilterConnection._event for command in b"CHTUN"},
}
