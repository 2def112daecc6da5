"""The shadow milter's side of the milter protocol (app/replication/milter_protocol.py), spoken
over a real unix socket as Postfix speaks it, byte by byte where that matters. The whole path
with the real Postfix is tests/integration/test_shadow_postfix.py."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop

from app.replication.milter_protocol import (
    HDR_LEADSPC,
    MAX_PACKET,
    NR_BODY,
    NR_HDR,
    NR_MAIL,
    NR_RCPT,
    WANTED,
    EndOfMessage,
    Message,
    MilterConnection,
    packet,
)

# What Postfix 3.7 offers with milter_protocol = 6 (every step and no-reply flag up to 0x1fffff).
POSTFIX_OFFERS = 0x1FFFFF


class Filter:
    def __init__(self, reply: bytes | None = None) -> None:
        self.messages: list[Message] = []
        self.reply = reply

    async def end_of_message(self, message: Message) -> bytes | None:
        self.messages.append(message)
        return self.reply


class Postfix:
    """The MTA's end of one milter connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, *packets: bytes, one_byte_at_a_time: bool = False) -> None:
        data = b"".join(packets)
        if one_byte_at_a_time:
            for i in range(len(data)):
                self.writer.write(data[i : i + 1])
                await self.writer.drain()
                await asyncio.sleep(0)
        else:
            self.writer.write(data)
            await self.writer.drain()

    async def answer(self) -> tuple[bytes, bytes]:
        (length,) = struct.unpack(">I", await asyncio.wait_for(self.reader.readexactly(4), 5))
        data = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return data[:1], data[1:]

    async def negotiate(self, offered: int = POSTFIX_OFFERS) -> int:
        await self.send(packet(b"O", struct.pack(">III", 6, 0x1FF, offered)))
        command, data = await self.answer()
        assert command == b"O"
        version, actions, protocol = struct.unpack(">III", data)
        assert (version, actions) == (6, 0)
        return protocol

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 5) == b""


@contextlib.asynccontextmanager
async def milter_at(path: Path, end_of_message: EndOfMessage) -> AsyncIterator[None]:
    server = await asyncio.get_running_loop().create_unix_server(
        lambda: MilterConnection(end_of_message), str(path)
    )
    async with server:
        yield


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Filter, Path]]:
    shadow_filter = Filter()
    path = tmp_path / "milter.sock"
    async with milter_at(path, shadow_filter.end_of_message):
        yield shadow_filter, path


async def connect(path: Path) -> Postfix:
    return Postfix(*await asyncio.open_unix_connection(str(path)))


def macros(stage: bytes, **values: str) -> bytes:
    return packet(
        b"D", stage + b"".join(f"{k}\0{v}\0".encode() for k, v in values.items())
    )  # fmt: skip


def transaction(queue_id: str, sender: str, *recipients: str, space: bytes = b" ") -> list[bytes]:
    """With `space` as Postfix sends a header's value when HDR_LEADSPC was agreed."""
    return [
        packet(b"M", f"<{sender}>\0SIZE=120\0".encode()),
        *(packet(b"R", f"<{r}>\0".encode()) for r in recipients),
        packet(b"L", b"Subject\0" + space + b"a test\r\n\tfolded\0"),
        packet(b"L", b"From\0" + space + b"<app@allowed.example>\0"),
        packet(b"B", b"line one\r\n"),
        packet(b"B", b"line two\r\n"),
        packet(b"D", b"E{i}\0" + queue_id.encode() + b"\0{client_addr}\x00198.18.0.9\0"),
        packet(b"E"),
    ]


async def test_a_message_reaches_the_filter_whole_and_only_its_end_is_answered(served):
    shadow_filter, path = served
    postfix = await connect(path)
    protocol = await postfix.negotiate()
    assert protocol == WANTED
    await postfix.send(*transaction("4ABC", "app@allowed.example", "a@x.example", "b@x.example"))
    # The envelope, headers and body went without answers: the first answer is end-of-data's.
    assert await postfix.answer() == (b"c", b"")
    [message] = shadow_filter.messages
    assert message.sender == "app@allowed.example"
    assert message.recipients == ["a@x.example", "b@x.example"]
    assert message.mail_params == ["SIZE=120"]
    assert message.recipient_params == [[], []]
    assert message.macro("i") == "4ABC"
    assert message.macro("client_addr") == "198.18.0.9"
    assert message.content() == (
        b"Subject: a test\r\n\tfolded\r\nFrom: <app@allowed.example>\r\n\r\n"
        b"line one\r\nline two\r\n"
    )


async def test_packets_cut_anywhere_make_the_same_message(served):
    shadow_filter, path = served
    postfix = await connect(path)
    await postfix.negotiate()
    await postfix.send(*transaction("4ABC", "s@allowed.example", "r@x.example"))
    assert await postfix.answer() == (b"c", b"")
    await postfix.send(
        *transaction("4ABC", "s@allowed.example", "r@x.example"), one_byte_at_a_time=True
    )
    assert await postfix.answer() == (b"c", b"")
    first, second = shadow_filter.messages
    assert first == second


async def test_the_filters_reply_code_goes_to_postfix(tmp_path):
    shadow_filter = Filter(reply=b"451 4.4.0 No second copy of the message can be made now")
    path = tmp_path / "milter.sock"
    async with milter_at(path, shadow_filter.end_of_message):
        postfix = await connect(path)
        await postfix.negotiate()
        await postfix.send(*transaction("4ABC", "s@allowed.example", "r@x.example"))
        assert await postfix.answer() == (
            b"y",
            b"451 4.4.0 No second copy of the message can be made now\0",
        )


async def test_an_mta_that_offers_no_shortcuts_gets_every_answer(served):
    shadow_filter, path = served
    postfix = await connect(path)
    assert await postfix.negotiate(offered=0) == 0
    for event in transaction("4ABC", "s@allowed.example", "r@x.example", space=b""):
        await postfix.send(event)
        if event[4:5] in (b"M", b"R", b"L", b"B", b"E"):
            assert await postfix.answer() == (b"c", b"")
    # Without HDR_LEADSPC the value comes without its leading space: one is put back.
    assert shadow_filter.messages[0].content().startswith(b"Subject: a test\r\n")


async def test_only_the_shortcuts_offered_are_taken(served):
    _, path = served
    postfix = await connect(path)
    offered = NR_MAIL | NR_RCPT | NR_HDR | NR_BODY | HDR_LEADSPC | (1 << 30)
    assert await postfix.negotiate(offered=offered) == offered & WANTED


async def test_a_message_never_carries_what_an_earlier_one_left(served):
    shadow_filter, path = served
    postfix = await connect(path)
    await postfix.negotiate()
    # Connection macros last; the first transaction is aborted after its recipients.
    await postfix.send(
        macros(b"C", j="relay.example"),
        packet(b"M", b"<old@allowed.example>\0"),
        packet(b"R", b"<old@x.example>\0"),
        packet(b"A"),
        packet(b"M", b"<new@allowed.example>\0"),
        packet(b"R", b"<new@x.example>\0"),
        macros(b"E", **{"{i}": "4FIRST"}),
        packet(b"E"),
    )
    assert await postfix.answer() == (b"c", b"")
    # The next message's end comes without its macros: no queue ID rather than the last one.
    await postfix.send(
        packet(b"M", b"<third@allowed.example>\0"), packet(b"R", b"<t@x.example>\0"), packet(b"E")
    )
    assert await postfix.answer() == (b"c", b"")
    first, second = shadow_filter.messages
    assert (first.sender, first.recipients, first.macro("i")) == (
        "new@allowed.example",
        ["new@x.example"],
        "4FIRST",
    )
    assert (second.macro("i"), second.macro("j")) == ("", "relay.example")


@pytest.mark.parametrize(
    "hostile",
    [
        struct.pack(">I", MAX_PACKET + 1) + b"B",  # longer than any packet may be
        struct.pack(">I", 0),  # no command at all
        packet(b"Z", b"what"),  # no such command
        packet(b"M", b"<no terminating NUL>"),
        packet(b"L", b"Subject\0no terminating NUL"),
        packet(b"O", b"short"),
    ],
)
async def test_what_postfix_never_sends_closes_the_connection(served, hostile):
    shadow_filter, path = served
    postfix = await connect(path)
    await postfix.negotiate()
    await postfix.send(hostile, *transaction("4ABC", "s@allowed.example", "r@x.example"))
    assert await postfix.closed()
    assert shadow_filter.messages == []


async def test_connections_are_served_side_by_side(tmp_path):
    """A copy that waits for the peer holds only its own connection."""
    release = asyncio.Event()
    seen: list[str] = []

    async def end_of_message(message: Message) -> bytes | None:
        seen.append(message.sender)
        if message.sender == "slow@allowed.example":
            await release.wait()
        return None

    path = tmp_path / "milter.sock"
    async with milter_at(path, end_of_message):
        slow, fast = await connect(path), await connect(path)
        await slow.negotiate()
        await fast.negotiate()
        await slow.send(*transaction("4SLOW", "slow@allowed.example", "r@x.example"))
        await fast.send(*transaction("4FAST", "fast@allowed.example", "r@x.example"))
        assert await fast.answer() == (b"c", b"")
        release.set()
        assert await slow.answer() == (b"c", b"")
        assert seen == ["slow@allowed.example", "fast@allowed.example"]


async def test_nothing_after_quit_is_read(served):
    shadow_filter, path = served
    postfix = await connect(path)
    await postfix.negotiate()
    await postfix.send(packet(b"Q"), *transaction("4ABC", "s@allowed.example", "r@x.example"))
    assert await postfix.closed()
    assert shadow_filter.messages == []


async def test_a_flood_while_a_copy_is_made_closes_the_connection(tmp_path):
    """Postfix sends nothing while it waits for end-of-data's answer: what does is not Postfix,
    and its packets are not buffered without end."""
    release = asyncio.Event()

    async def end_of_message(message: Message) -> bytes | None:
        await release.wait()
        return None

    path = tmp_path / "milter.sock"
    async with milter_at(path, end_of_message):
        postfix = await connect(path)
        await postfix.negotiate()
        await postfix.send(*transaction("4ABC", "s@allowed.example", "r@x.example"))
        body = packet(b"B", b"x" * 60_000)
        try:
            await postfix.send(*[body] * (MAX_PACKET // len(body) + 2))
            closed = await postfix.closed()
        except ConnectionError:  # closed while the flood was still being written
            closed = True
        assert closed
        release.set()


def test_a_message_under_uvloop_as_the_service_runs_it(tmp_path):
    """shadow_milter.serve runs on uvloop, whose transports are not asyncio's classes."""

    async def scenario() -> list[Message]:
        shadow_filter = Filter()
        path = tmp_path / "milter.sock"
        async with milter_at(path, shadow_filter.end_of_message):
            postfix = await connect(path)
            await postfix.negotiate()
            await postfix.send(*transaction("4ABC", "s@allowed.example", "r@x.example"))
            assert await postfix.answer() == (b"c", b"")
        return shadow_filter.messages

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        [message] = runner.run(scenario())
    assert (message.sender, message.recipients) == ("s@allowed.example", ["r@x.example"])
