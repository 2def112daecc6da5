"""The notify FIFO reader's parts that need no database: the line parser, the FIFO itself across
keepalived restarts, and the state file."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import stat
import time

import pytest

from app.cluster import vrrp
from app.cluster.vrrp import Notification, parse_line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('INSTANCE "VI_1" MASTER 150', Notification("INSTANCE", "VI_1", "MASTER", 150)),
        ('INSTANCE "VI_MAIL" BACKUP 100\n', Notification("INSTANCE", "VI_MAIL", "BACKUP", 100)),
        ('INSTANCE "VI_MAIL" FAULT 0', Notification("INSTANCE", "VI_MAIL", "FAULT", 0)),
        ('INSTANCE "VI_MAIL" STOP 150\r\n', Notification("INSTANCE", "VI_MAIL", "STOP", 150)),
        ('INSTANCE "VI_MAIL" DELETED 150', Notification("INSTANCE", "VI_MAIL", "DELETED", 150)),
        ('GROUP "VG_1" MASTER 0', Notification("GROUP", "VG_1", "MASTER", 0)),
        (
            'INSTANCE "VI_1" MASTER_RX_LOWER_PRI 150',
            Notification("INSTANCE", "VI_1", "MASTER_RX_LOWER_PRI", 150),
        ),
        (b'INSTANCE "VI_1" BACKUP 255', Notification("INSTANCE", "VI_1", "BACKUP", 255)),
        # A name with a space or a quote in it still ends at the last `" `.
        ('INSTANCE "my vi" MASTER 1', Notification("INSTANCE", "my vi", "MASTER", 1)),
        ('INSTANCE "a"b" MASTER 1', Notification("INSTANCE", 'a"b', "MASTER", 1)),
    ],
)
def test_it_parses_notify_fifo_lines(line, expected):
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "INSTANCE VI_1 MASTER 150",  # the name is always quoted
        'INSTANCE "VI_1" MASTER',
        'INSTANCE "VI_1" MASTER high',
        'INSTANCE "VI_1" MASTER 256',
        'INSTANCE "VI_1" master 150',
        'INSTANCE "" MASTER 150',
        'SERVICE "VI_1" MASTER 150',
        # The checker process writes these to the same FIFO.
        "VS [192.168.201.15]:tcp:80 UP",
        "RS [1.2.3.4]:tcp:80 [192.168.201.15]:tcp:80 DOWN",
    ],
)
def test_it_ignores_what_is_not_a_vrrp_line(line):
    assert parse_line(line) is None


@pytest.mark.parametrize(
    ("line", "is_state"),
    [
        ('INSTANCE "VI_1" MASTER 150', True),
        ('INSTANCE "VI_1" BACKUP 150', True),
        ('INSTANCE "VI_1" FAULT 150', True),
        ('INSTANCE "VI_1" STOP 150', True),
        ('INSTANCE "VI_1" MASTER_RX_LOWER_PRI 150', False),
        ('INSTANCE "VI_1" MASTER_PRIORITY 140', False),
        ('INSTANCE "VI_1" {UNKNOWN} 150', False),
        ('GROUP "VG_1" MASTER 0', False),
    ],
)
def test_only_instance_states_are_state_changes(line, is_state):
    event = parse_line(line)
    assert event is not None
    assert event.is_state_change is is_state


# -- the state file -----------------------------------------------------------------------------


def test_the_state_file_is_replaced_whole(tmp_path):
    path = tmp_path / "vrrp.state"
    assert vrrp.read_state(path) is None
    at = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    vrrp.write_state(path, "a", Notification("INSTANCE", "VI_MAIL", "BACKUP", 150), at)
    vrrp.write_state(path, "a", Notification("INSTANCE", "VI_MAIL", "MASTER", 150), at)
    assert vrrp.read_state(path) == {
        "node_id": "a",
        "instance": "VI_MAIL",
        "state": "MASTER",
        "priority": 150,
        "at": "2026-11-25T12:00:00+00:00",
    }
    assert json.loads(path.read_text())["state"] == "MASTER"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["vrrp.state"]  # no temporary files left


# -- the FIFO -------------------------------------------------------------------------------------


def test_the_fifo_is_created_private(tmp_path):
    path = tmp_path / "vrrp.fifo"
    vrrp.ensure_fifo(path)
    mode = path.stat().st_mode
    assert stat.S_ISFIFO(mode)
    assert stat.S_IMODE(mode) == 0o600
    vrrp.ensure_fifo(path)  # exists: fine


def test_a_regular_file_in_the_fifo_place_is_refused(tmp_path):
    path = tmp_path / "vrrp.fifo"
    path.write_text("not a fifo")
    with pytest.raises(RuntimeError, match="not a FIFO"):
        vrrp.ensure_fifo(path)


class FakeKeepalived:
    """Opens the FIFO the way keepalived does (O_RDWR | O_NONBLOCK) and writes whole lines."""

    def __init__(self, path: os.PathLike[str]) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)

    def say(self, *lines: str) -> None:
        for line in lines:
            os.write(self.fd, f"{line}\n".encode())

    def stop(self) -> None:
        os.close(self.fd)


async def collect(lines, into: list[str], count: int) -> None:
    async for line in lines:
        into.append(line)
        if len(into) == count:
            return


async def test_the_reader_survives_keepalived_restarts(tmp_path):
    path = tmp_path / "vrrp.fifo"
    vrrp.ensure_fifo(path)
    seen: list[str] = []
    reader = asyncio.create_task(collect(vrrp.read_lines(path), seen, 5))
    try:
        await asyncio.sleep(0.05)
        first = FakeKeepalived(path)
        first.say('INSTANCE "VI_MAIL" BACKUP 150', 'INSTANCE "VI_MAIL" MASTER 150')
        first.say('INSTANCE "VI_MAIL" STOP 150')
        first.stop()  # end of file for the reader
        await asyncio.sleep(0.1)
        assert len(seen) == 3
        # Nothing happens while no keepalived runs: no busy loop on end-of-file.
        cpu = time.process_time()
        await asyncio.sleep(0.3)
        assert time.process_time() - cpu < 0.1
        assert not reader.done()
        second = FakeKeepalived(path)
        second.say('INSTANCE "VI_MAIL" BACKUP 150')
        await asyncio.sleep(0.05)
        os.write(second.fd, b'INSTANCE "VI_MAIL" MA')  # a line in two writes
        await asyncio.sleep(0.05)
        os.write(second.fd, b"STER 150\n")
        await asyncio.wait_for(reader, timeout=5)
        second.stop()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    assert seen == [
        'INSTANCE "VI_MAIL" BACKUP 150',
        'INSTANCE "VI_MAIL" MASTER 150',
        'INSTANCE "VI_MAIL" STOP 150',
        'INSTANCE "VI_MAIL" BACKUP 150',
        'INSTANCE "VI_MAIL" MASTER 150',
    ]


async def test_the_reader_recreates_a_fifo_that_keepalived_removed(tmp_path):
    """keepalived removes a FIFO it created itself when it exits."""
    path = tmp_path / "vrrp.fifo"
    vrrp.ensure_fifo(path)
    seen: list[str] = []
    reader = asyncio.create_task(collect(vrrp.read_lines(path), seen, 2))
    try:
        await asyncio.sleep(0.05)
        first = FakeKeepalived(path)
        first.say('INSTANCE "VI_MAIL" STOP 150')
        path.unlink()
        first.stop()
        for _ in range(100):
            if path.exists():
                break
            await asyncio.sleep(0.02)
        assert stat.S_ISFIFO(path.stat().st_mode)
        second = FakeKeepalived(path)
        second.say('INSTANCE "VI_MAIL" BACKUP 150')
        await asyncio.wait_for(reader, timeout=5)
        second.stop()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    assert seen == ['INSTANCE "VI_MAIL" STOP 150', 'INSTANCE "VI_MAIL" BACKUP 150']


async def test_cancelling_the_reader_closes_the_fifo(tmp_path):
    path = tmp_path / "vrrp.fifo"
    vrrp.ensure_fifo(path)
    before = set(os.listdir("/proc/self/fd"))
    reader = asyncio.create_task(collect(vrrp.read_lines(path), [], 1))
    await asyncio.sleep(0.05)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    assert set(os.listdir("/proc/self/fd")) <= before
