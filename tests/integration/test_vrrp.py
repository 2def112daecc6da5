"""VRRP for real: two keepalived 2.2.7 with the product's configuration, in two network namespaces.

Node a (198.18.6.11, priority 150) and node b (198.18.6.12, priority 100) are joined by a veth
pair; the VIP is 198.18.6.100. Each namespace has a tiny SMTP greeter on port 25 in place of
Postfix, so the real check_smtp.sh track script runs. The notify FIFO reader (app.cluster.vrrp.run)
runs as a background task for each node and records into the test database.

Needs root, keepalived and iproute2; skipped (with the reason) otherwise. The VRRP part also runs
without root: the reader against a FIFO we write ourselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.cluster import keepalived, vip, vrrp
from app.cluster.vrrp_table import VrrpEvent

ROOT = Path(__file__).resolve().parents[2]
VIP = "198.18.6.100"
NODES = {"a": ("198.18.6.11", 150), "b": ("198.18.6.12", 100)}
ADVERT_INT = 1  # the default: a clean stop moves the VIP after the peer's skew time (~0.6 s)

GREETER = """
import socket, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 25))
server.listen(16)
def greet(conn):
    with conn:
        conn.sendall(b"220 relay.test ESMTP\\r\\n")
        try:
            conn.settimeout(2)
            conn.recv(64)
        except OSError:
            pass
while True:
    conn, _ = server.accept()
    threading.Thread(target=greet, args=(conn,), daemon=True).start()
"""


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, keepalived)"
    for tool in ("keepalived", "ip"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed"
    return None


def run(*cmd: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")


@pytest.fixture
async def vrrp_events() -> AsyncIterator[None]:
    """vrrp_events exists (its migration normally made it already) and is empty."""
    await VrrpEvent.create_table(if_not_exists=True)
    await VrrpEvent.delete(force=True)
    yield
    await VrrpEvent.delete(force=True)


async def states(node_id: str) -> list[str]:
    rows = (
        await VrrpEvent.select(VrrpEvent.state)
        .where(VrrpEvent.node_id == node_id)
        .order_by(VrrpEvent.id)
    )
    return [row["state"] for row in rows]


async def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def stop_task(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# -- the reader alone (no root needed) ---------------------------------------------------------


async def test_the_hooks_fire_on_becoming_master_and_on_every_way_of_leaving_it(
    vrrp_events, tmp_path
):
    """Promotion on MASTER; the return reconcile whenever MASTER ends: BACKUP, FAULT (the SMTP
    check failed) or STOP (keepalived stopped, as in a switchover), never on other changes."""
    fifo, state_file = tmp_path / "vrrp.fifo", tmp_path / "vrrp.state"
    calls: list[str] = []
    promoted_at: list[dt.datetime] = []

    async def on_master(event: vrrp.Notification, at: dt.datetime) -> None:
        calls.append(f"promote at {event.state}")
        promoted_at.append(at)

    async def on_return(event: vrrp.Notification, left_at: dt.datetime, held: Any) -> None:
        calls.append(f"reconcile at {event.state}")

    reader = asyncio.create_task(
        vrrp.run(fifo, "a", state_file, on_master=on_master, on_return=on_return)
    )
    try:
        await wait_for(fifo.exists, 5, "the FIFO")
        writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        states = ["BACKUP", "MASTER", "BACKUP", "FAULT", "BACKUP", "MASTER", "FAULT", "BACKUP"]
        states += ["MASTER", "STOP", "BACKUP"]
        lines = "".join(f'INSTANCE "VI_MAIL" {state} 150\n' for state in states)
        os.write(writer, lines.encode())
        await wait_for(lambda: _count_is(len(states)), 5, "every row")
        os.close(writer)
        assert calls == [
            "promote at MASTER",
            "reconcile at BACKUP",
            "promote at MASTER",
            "reconcile at FAULT",
            "promote at MASTER",
            "reconcile at STOP",
        ]
        # The time the promotion records as its MASTER's is the one vrrp_events has.
        rows = await (
            VrrpEvent.select(VrrpEvent.at).where(VrrpEvent.state == "MASTER").order_by(VrrpEvent.id)
        )
        assert promoted_at == [row["at"] for row in rows]
    finally:
        await stop_task(reader)


async def test_reconciles_after_leaving_master_run_one_after_another(vrrp_events, tmp_path):
    """A node whose SMTP check flaps leaves MASTER again while the last reconcile still waits
    for the peer: the reconciles (hold, ask, delete, release the whole queue) must not run side
    by side, and each is told when its own departure happened, not when its turn came."""
    fifo, state_file = tmp_path / "vrrp.fifo", tmp_path / "vrrp.state"
    running: list[str] = []
    log: list[tuple[str, str, dt.datetime]] = []  # (start or end, state, left_at or now)

    async def on_return(event: vrrp.Notification, left_at: dt.datetime, held: Any) -> None:
        log.append(("start", event.state, left_at))
        running.append(event.state)
        assert len(running) == 1, f"reconciles side by side: {running}"
        await asyncio.sleep(1.0)
        running.remove(event.state)
        log.append(("end", event.state, dt.datetime.now(dt.UTC)))

    reader = asyncio.create_task(vrrp.run(fifo, "a", state_file, on_return=on_return))
    try:
        await wait_for(fifo.exists, 5, "the FIFO")
        writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        for state in ("MASTER", "FAULT", "BACKUP", "MASTER", "BACKUP"):
            os.write(writer, f'INSTANCE "VI_MAIL" {state} 150\n'.encode())
            await asyncio.sleep(0.1)
        await wait_for(lambda: len(log) == 4, 5, "both reconciles")
        os.close(writer)
        assert [(step, state) for step, state, _ in log] == [
            ("start", "FAULT"),
            ("end", "FAULT"),
            ("start", "BACKUP"),
            ("end", "BACKUP"),
        ]
        second_left, first_ended = log[2][2], log[1][2]
        assert second_left < first_ended - dt.timedelta(seconds=0.5)
    finally:
        await stop_task(reader)


async def test_leaving_master_runs_on_leave_at_once_even_while_a_reconcile_waits(
    vrrp_events, tmp_path
):
    """The queue is held the moment this node leaves MASTER, not when the reconcile of an
    earlier departure (waiting for the peer) is done; on_return gets what on_leave returned."""
    fifo, state_file = tmp_path / "vrrp.fifo", tmp_path / "vrrp.state"
    log: list[tuple[str, str, Any]] = []

    async def on_leave(event: vrrp.Notification) -> str:
        log.append(("leave", event.state, None))
        return f"held at {event.state}"

    async def on_return(event: vrrp.Notification, left_at: dt.datetime, held: Any) -> None:
        log.append(("start", event.state, held))
        await asyncio.sleep(1.0)
        log.append(("end", event.state, None))

    reader = asyncio.create_task(
        vrrp.run(fifo, "a", state_file, on_leave=on_leave, on_return=on_return)
    )
    try:
        await wait_for(fifo.exists, 5, "the FIFO")
        writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        for state in ("MASTER", "FAULT", "BACKUP", "MASTER", "BACKUP"):
            os.write(writer, f'INSTANCE "VI_MAIL" {state} 150\n'.encode())
            await asyncio.sleep(0.1)
        await wait_for(lambda: len(log) == 6, 5, "both departures")
        os.close(writer)
        assert log == [
            ("leave", "FAULT", None),
            ("start", "FAULT", "held at FAULT"),
            ("leave", "BACKUP", None),
            ("end", "FAULT", None),
            ("start", "BACKUP", "held at BACKUP"),
            ("end", "BACKUP", None),
        ]
    finally:
        await stop_task(reader)


@pytest.mark.parametrize(
    ("before", "reconciles"),
    [
        ("MASTER", True),  # the reader restarted while this node was MASTER
        ("BACKUP", False),
        ("MASTER of node b", False),  # a state file that is not this node's says nothing
        ("garbage", False),
        (None, False),  # after a reboot /run is empty
    ],
)
async def test_a_restarted_reader_remembers_that_this_node_was_master(
    vrrp_events, tmp_path, before, reconciles
):
    """keepalived does not repeat its state to a new reader: the state file the last reader
    wrote tells it, so leaving MASTER still starts the reconcile."""
    fifo, state_file = tmp_path / "vrrp.fifo", tmp_path / "vrrp.state"
    at = dt.datetime.now(dt.UTC)
    if before == "garbage":
        state_file.write_text("{not json\n")
    elif before is not None:
        state, _, node = before.partition(" of node ")
        vrrp.write_state(
            state_file, node or "a", vrrp.Notification("INSTANCE", "VI_MAIL", state, 150), at
        )
    calls: list[str] = []

    async def on_return(event: vrrp.Notification, left_at: dt.datetime, held: Any) -> None:
        calls.append(f"reconcile at {event.state}")

    reader = asyncio.create_task(vrrp.run(fifo, "a", state_file, on_return=on_return))
    try:
        await wait_for(fifo.exists, 5, "the FIFO")
        writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        os.write(writer, b'INSTANCE "VI_MAIL" BACKUP 150\n')
        await wait_for(lambda: _count_is(1), 5, "the row")
        os.close(writer)
        await asyncio.sleep(0.1)  # a hook task that was started has run by now
        assert calls == (["reconcile at BACKUP"] if reconciles else [])
    finally:
        await stop_task(reader)


async def test_the_reader_records_changes_in_order_and_keeps_the_state_file(vrrp_events, tmp_path):
    fifo, state_file = tmp_path / "vrrp.fifo", tmp_path / "vrrp.state"
    reader = asyncio.create_task(vrrp.run(fifo, "a", state_file))
    try:
        await wait_for(fifo.exists, 5, "the FIFO")
        writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # as keepalived opens it
        lines = [
            'INSTANCE "VI_MAIL" BACKUP 150',
            'INSTANCE "VI_MAIL" MASTER_RX_LOWER_PRI 150',  # an event, not a state
            "VS [198.18.6.100]:tcp:25 UP",  # the checker's; not ours
            'INSTANCE "VI_MAIL" MASTER 150',
            'INSTANCE "VI_MAIL" FAULT 150',
            'INSTANCE "VI_MAIL" BACKUP 150',
        ]
        os.write(writer, "".join(f"{line}\n" for line in lines).encode())
        await wait_for(lambda: _count_is(4), 5, "four rows")
        os.close(writer)
        assert await states("a") == ["BACKUP", "MASTER", "FAULT", "BACKUP"]
        rows = await VrrpEvent.select().order_by(VrrpEvent.id)
        assert {(row["node_id"], row["instance"], row["priority"]) for row in rows} == {
            ("a", "VI_MAIL", 150)
        }
        assert [row["at"] for row in rows] == sorted(row["at"] for row in rows)
        state = vrrp.read_state(state_file)
        assert state is not None
        assert (state["state"], state["instance"], state["node_id"]) == ("BACKUP", "VI_MAIL", "a")
    finally:
        await stop_task(reader)


async def _count_is(count: int) -> bool:
    return await VrrpEvent.count() == count


async def test_events_wait_for_the_database_and_keep_their_order(
    vrrp_events, tmp_path, monkeypatch
):
    """While inserts fail, lines keep being read (the state file moves on) and nothing is lost."""
    fifo, state_file = tmp_path / "vrrp.fifo", tmp_path / "vrrp.state"
    real_insert = VrrpEvent.insert
    failures = {"left": 3}

    def flaky_insert(*rows):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionError("database is down")
        return real_insert(*rows)

    monkeypatch.setattr(VrrpEvent, "insert", flaky_insert)
    reader = asyncio.create_task(vrrp.run(fifo, "b", state_file))
    try:
        await wait_for(fifo.exists, 5, "the FIFO")
        writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        os.write(writer, b'INSTANCE "VI_MAIL" BACKUP 100\nINSTANCE "VI_MAIL" MASTER 100\n')
        await wait_for(
            lambda: (vrrp.read_state(state_file) or {}).get("state") == "MASTER",
            5,
            "the state file to say MASTER",
        )
        await wait_for(lambda: _count_is(2), 15, "both rows after the retries")
        os.close(writer)
        assert await states("b") == ["BACKUP", "MASTER"]
        assert failures["left"] == 0
    finally:
        await stop_task(reader)


# -- two real keepalived --------------------------------------------------------------------------


class Pair:
    """Two namespaces, a greeter on port 25 in each, one keepalived per node (started on demand),
    one FIFO reader per node. stop() removes everything, also after a failure."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.ns = {node: f"mr-vr-{node}-{pid}" for node in NODES}
        self.veth = {node: f"mrv{node}{pid}" for node in NODES}
        self.base = Path(tempfile.mkdtemp(prefix="mailrelay-vrrp-"))
        # keepalived's script security: every directory on the check script's path must be
        # root's and not writable by others; the script user (nobody) must reach it.
        os.chmod(self.base, 0o755)  # noqa: S103
        self.greeters: dict[str, subprocess.Popen[bytes]] = {}
        self.keepalived: dict[str, subprocess.Popen[bytes]] = {}
        self.readers: dict[str, asyncio.Task[None]] = {}
        self.starts = dict.fromkeys(NODES, 0)

    def fifo(self, node: str) -> Path:
        return self.base / f"{node}.fifo"

    def state_file(self, node: str) -> Path:
        return self.base / f"{node}.state"

    def holds_vip(self, node: str) -> bool:
        return vip.vip_held(VIP, netns=self.ns[node])

    def holders(self) -> list[str]:
        return [node for node in NODES if self.holds_vip(node)]

    def log(self, node: str) -> str:
        logs = sorted(self.base.glob(f"keepalived-{node}-*.log"))
        return "\n".join(path.read_text(errors="replace") for path in logs)

    async def start(self) -> Pair:
        self._network()
        script = self.base / "check_smtp.sh"
        shutil.copy2(ROOT / "keepalived-conf" / "check_smtp.sh", script)
        for node, (address, priority) in NODES.items():
            peer = next(a for n, (a, _) in NODES.items() if n != node)
            config = keepalived.render_config(
                node_id=node,
                node_ip=address,
                peer_node_ip=peer,
                vip_address=VIP,
                vrrp_priority=priority,
                vrrp_advert_int=ADVERT_INT,
                vrrp_interface="eth0",
                check_script=str(script),
                notify_fifo=str(self.fifo(node)),
                script_user="nobody",  # keepalived_script exists only on installed nodes
            )
            (self.base / f"{node}.conf").write_text(config)
            self.greeters[node] = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[node], sys.executable, "-c", GREETER],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.readers[node] = asyncio.create_task(
                vrrp.run(self.fifo(node), node, self.state_file(node)), name=f"reader-{node}"
            )
        for node, (address, _) in NODES.items():
            await wait_for(
                lambda node=node, address=address: (
                    subprocess.run(
                        ["ip", "netns", "exec", self.ns[node], str(script), address, "25", "1"],
                        capture_output=True,
                        check=False,
                    ).returncode
                    == 0
                ),
                10,
                f"the greeter of node {node}",
            )
            await wait_for(self.fifo(node).exists, 5, f"the FIFO of node {node}")
        return self

    def _network(self) -> None:
        self._remove_network()
        a, b = self.ns["a"], self.ns["b"]
        run("ip", "netns", "add", a)
        run("ip", "netns", "add", b)
        run("ip", "link", "add", self.veth["a"], "type", "veth", "peer", "name", self.veth["b"])
        for node, (address, _) in NODES.items():
            ns = self.ns[node]
            run("ip", "link", "set", self.veth[node], "netns", ns)
            run("ip", "-n", ns, "link", "set", self.veth[node], "name", "eth0")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")

    def start_keepalived(self, node: str) -> None:
        assert node not in self.keepalived or self.keepalived[node].poll() is not None
        self.starts[node] += 1
        log = self.base / f"keepalived-{node}-{self.starts[node]}.log"
        with log.open("wb") as output:
            self.keepalived[node] = subprocess.Popen(
                [
                    "ip", "netns", "exec", self.ns[node],
                    "keepalived", "-n", "-l", "-D",
                    "-f", str(self.base / f"{node}.conf"),
                    "-p", str(self.base / f"{node}.pid"),
                    "-r", str(self.base / f"{node}-vrrp.pid"),
                    "--vrrp",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop_keepalived(self, node: str, sig: int = signal.SIGTERM) -> None:
        process = self.keepalived.get(node)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop_greeter(self, node: str) -> None:
        process = self.greeters.get(node)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    async def stop(self) -> None:
        for node in NODES:
            with contextlib.suppress(Exception):
                self.stop_keepalived(node)
            with contextlib.suppress(Exception):
                self.stop_greeter(node)
        for task in self.readers.values():
            with contextlib.suppress(Exception):
                await stop_task(task)
        self._remove_network()
        shutil.rmtree(self.base, ignore_errors=True)

    def _remove_network(self) -> None:
        for node in NODES:
            # Deleting a namespace deletes its end of the veth pair, and with it the other end.
            subprocess.run(["ip", "netns", "del", self.ns[node]], capture_output=True, check=False)
            subprocess.run(["ip", "link", "del", self.veth[node]], capture_output=True, check=False)


@pytest.fixture
async def pair(vrrp_events) -> AsyncIterator[Pair]:
    reason = missing()
    if reason is not None:
        print(f"skipping the two-node keepalived test: {reason}")
        pytest.skip(f"two-node keepalived test: {reason}")
    nodes = Pair()
    try:
        await nodes.start()
        yield nodes
    finally:
        # pytest shows this output only when the test failed.
        for node in NODES:
            print(f"--- keepalived log of node {node} ---\n{nodes.log(node)}")
        await nodes.stop()


async def settle(pair: Pair, seconds: float) -> None:
    """Watch for `seconds` that exactly one node holds the VIP all along."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert len(pair.holders()) == 1, f"VIP holders: {pair.holders()}"
        await asyncio.sleep(0.1)


async def test_one_node_holds_the_vip_a_clean_stop_moves_it_and_the_returning_node_waits(pair):
    # a (priority 150) starts alone and takes the VIP after the master-down interval.
    pair.start_keepalived("a")
    await wait_for(lambda: pair.holds_vip("a"), 15, "node a to take the VIP")
    pair.start_keepalived("b")
    await wait_for(lambda: _state_is(pair, "b", "BACKUP"), 10, "node b to report BACKUP")
    await settle(pair, 3 * ADVERT_INT + 1)  # longer than b's master-down interval
    assert pair.holders() == ["a"]

    # A clean stop: a sends priority 0, b takes over after its skew time.
    started = time.monotonic()
    pair.keepalived["a"].send_signal(signal.SIGTERM)
    await wait_for(lambda: pair.holds_vip("b"), 5, "node b to take the VIP", interval=0.01)
    moved = time.monotonic() - started
    pair.stop_keepalived("a")
    print(
        f"\nVIP moved from a to b {moved:.2f} s after SIGTERM to a's keepalived "
        f"(which exited after {time.monotonic() - started:.2f} s)"
    )
    assert moved < 3 * ADVERT_INT  # faster than any master-down timeout: priority 0 was heard
    assert pair.holders() == ["b"]

    # a comes back with the higher priority: nopreempt keeps it BACKUP.
    pair.start_keepalived("a")
    await wait_for(lambda: _state_is(pair, "a", "BACKUP"), 10, "node a to report BACKUP again")
    await settle(pair, 3 * ADVERT_INT + 2)  # a would have preempted within this time
    assert pair.holders() == ["b"]
    assert (vrrp.read_state(pair.state_file("a")) or {}).get("state") == "BACKUP"
    assert (vrrp.read_state(pair.state_file("b")) or {}).get("state") == "MASTER"

    # The readers recorded every change in order, across a's restart.
    await wait_for(
        lambda: _states_are("a", ["BACKUP", "MASTER", "STOP", "BACKUP"]), 5, "a's events"
    )
    await wait_for(lambda: _states_are("b", ["BACKUP", "MASTER"]), 5, "b's events")
    assert not any(task.done() for task in pair.readers.values())


async def test_a_node_whose_postfix_stops_answering_gives_up_the_vip(pair):
    pair.start_keepalived("a")
    await wait_for(lambda: pair.holds_vip("a"), 15, "node a to take the VIP")
    pair.start_keepalived("b")
    await wait_for(lambda: _state_is(pair, "b", "BACKUP"), 10, "node b to report BACKUP")

    started = time.monotonic()
    pair.stop_greeter("a")  # "Postfix" on a stops answering; keepalived itself keeps running
    await wait_for(lambda: pair.holds_vip("b"), 15, "node b to take the VIP")
    print(f"\nVIP moved to b {time.monotonic() - started:.2f} s after a's port 25 went away")
    assert pair.holders() == ["b"]
    await wait_for(lambda: _states_are("a", ["BACKUP", "MASTER", "FAULT"]), 5, "a's events")
    await wait_for(lambda: _states_are("b", ["BACKUP", "MASTER"]), 5, "b's events")


def _state_is(pair: Pair, node: str, state: str) -> bool:
    return (vrrp.read_state(pair.state_file(node)) or {}).get("state") == state


async def _states_are(node: str, expected: list[str]) -> bool:
    return await states(node) == expected
