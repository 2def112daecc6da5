"""VRRP events: read keepalived's notify FIFO, keep a state file, record every change in order.

keepalived writes one line per state change to its ``notify_fifo``::

    INSTANCE "VI_MAIL" MASTER 150
    GROUP "VG_1" BACKUP 0

(TYPE "NAME" STATE PRIORITY; see keepalived.conf(5) and vrrp_notify.c). Unlike notify scripts,
which run asynchronously and may overlap, the FIFO delivers the changes in the order they
happened. The reader runs as its own service (mailrelay-vrrp-events.service) for as long as the
node is up:

* each line is parsed; instance state changes are written to the state file at once (atomically,
  for jobs that want to know what keepalived last said) and queued for PostgreSQL;
* a single writer task inserts the queued events into ``vrrp_events`` one by one, in order, and
  retries while the database is unreachable without blocking the FIFO (keepalived must never find
  it full);
* when keepalived stops, the FIFO reaches end-of-file; the reader opens it again and waits for
  the next keepalived. The FIFO is created here (mode 0600) before keepalived starts, so
  keepalived never removes it when it exits.

The state file says what keepalived reported, not what is true now (keepalived may have been
killed without a word). Jobs that act only on the active node must check the address itself:
``app.cluster.vip.vip_held()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import socket
import stat
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import logsetup
from app.agent.client import AgentClient
from app.cluster.locks import DATABASE_RETRY_SECONDS, pause_for_database
from app.cluster.vrrp_table import VrrpEvent
from app.replication import promotion, reconcile
from app.settings import Settings, SettingsError, load_settings

log = logging.getLogger("mailrelay.vrrp")

FIFO_PATH = Path("/run/mailrelay-vrrp/vrrp.fifo")
STATE_FILE = Path("/run/mailrelay-vrrp/vrrp.state")

# The states an instance can be in; keepalived also writes events that are not state changes
# (MASTER_RX_LOWER_PRI, and MASTER_PRIORITY / BACKUP_PRIORITY with notify_priority_changes).
STATES = frozenset({"MASTER", "BACKUP", "FAULT", "STOP", "DELETED"})

_LINE = re.compile(r'(INSTANCE|GROUP) "(.+)" ([A-Z_{}]+) (\d{1,3})')
_RETRY_SECONDS = DATABASE_RETRY_SECONDS


@dataclass(frozen=True)
class Notification:
    """One FIFO line: kind is INSTANCE or GROUP (a sync group; its priority is always 0)."""

    kind: str
    name: str
    state: str
    priority: int

    @property
    def is_state_change(self) -> bool:
        return self.kind == "INSTANCE" and self.state in STATES


def parse_line(line: str | bytes) -> Notification | None:
    """A notify FIFO line, or None when it is not a VRRP line we understand.

    The checker process writes ``VS ...`` / ``RS ...`` lines to the same FIFO when it runs;
    those and anything malformed give None.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    match = _LINE.fullmatch(line.strip())
    if match is None:
        return None
    kind, name, state, priority = match.groups()
    number = int(priority)
    if number > 255:
        return None
    return Notification(kind, name, state, number)


# -- the state file -----------------------------------------------------------------------------


def write_state(path: Path, node_id: str, event: Notification, at: dt.datetime) -> None:
    """Replace the state file atomically: a reader sees the old or the new content, never half."""
    path = Path(path)
    content = json.dumps(
        {
            "node_id": node_id,
            "instance": event.name,
            "state": event.state,
            "priority": event.priority,
            "at": at.isoformat(),
        },
        sort_keys=True,
    )
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # Readable by the jobs (group mailrelay and others); only this service writes it.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_state(path: Path = STATE_FILE) -> dict[str, Any] | None:
    """The last state keepalived reported on this node, or None when nothing was reported yet."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


# -- reading the FIFO ----------------------------------------------------------------------------


def ensure_fifo(path: Path) -> None:
    """Create the FIFO (mode 0600) unless it exists; refuse anything else at that path."""
    path = Path(path)
    try:
        os.mkfifo(path, 0o600)
        log.info("created the notify FIFO %s", path)
    except FileExistsError:
        mode = os.lstat(path).st_mode
        if not stat.S_ISFIFO(mode):
            raise RuntimeError(f"{path} exists and is not a FIFO") from None


async def _wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def read_lines(path: Path) -> AsyncGenerator[str, None]:
    """The FIFO's lines, forever, across keepalived restarts.

    The FIFO is opened non-blocking for reading. Until a writer has come, Linux reports neither
    data nor hang-up, so waiting costs nothing; when the last writer (keepalived) closes it, read()
    returns end-of-file, and the FIFO is opened again (and created again, should keepalived have
    removed one it had made itself).
    """
    path = Path(path)
    while True:
        ensure_fifo(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        pending = b""
        try:
            while True:
                await _wait_readable(fd)
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    yield raw.decode("utf-8", errors="replace")
        finally:
            os.close(fd)
        if pending:
            yield pending.decode("utf-8", errors="replace")
        log.info("keepalived closed the notify FIFO; waiting for it to come back")


# -- recording ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pending:
    at: dt.datetime
    event: Notification


async def _record(queue: asyncio.Queue[_Pending], node_id: str, in_flight: list[_Pending]) -> None:
    """Insert queued events one at a time, in order; retry each until the database takes it.

    The event being inserted is kept in in_flight, so that one lost at shutdown can be named.
    """
    while True:
        item = await queue.get()
        in_flight[:] = [item]
        attempt = 0
        while True:
            try:
                await VrrpEvent.insert(
                    VrrpEvent(
                        at=item.at,
                        node_id=node_id,
                        instance=item.event.name,
                        state=item.event.state,
                        priority=item.event.priority,
                    )
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                what = f"cannot record {item.event.name} {item.event.state}"
                await pause_for_database(log, attempt, what, exc, _RETRY_SECONDS)
                attempt += 1
        in_flight.clear()
        queue.task_done()


def _last_reported_state(state_file: Path, node_id: str) -> str | None:
    """What keepalived last said on this node before this reader started, if it said anything.

    The reader is restarted while keepalived runs (install-node does so on new code, systemd after
    a crash); keepalived does not repeat its state then. Without this, a node that is MASTER while
    the reader restarts would not reconcile when it later leaves MASTER. The state file lives in
    /run, so after a reboot there is none, and the boot-time reconcile covers that case.
    """
    try:
        state = read_state(state_file)
    except (OSError, ValueError) as exc:
        log.warning(
            "cannot read the state file %s (%s); assuming no earlier state", state_file, exc
        )
        return None
    if not isinstance(state, dict) or state.get("node_id") != node_id:
        return None
    reported = state.get("state")
    return reported if reported in STATES else None


async def run(
    fifo_path: Path | str = FIFO_PATH,
    node_id: str = "a",
    state_file: Path | str = STATE_FILE,
    *,
    on_ready: Callable[[], None] | None = None,
    flush_seconds: float = 5.0,
    on_master: Callable[[Notification, dt.datetime], Awaitable[object]] | None = None,
    on_leave: Callable[[Notification], Awaitable[Any]] | None = None,
    on_return: Callable[[Notification, dt.datetime, Any], Awaitable[object]] | None = None,
) -> None:
    """Read the FIFO forever; keep the state file; record each state change in vrrp_events.

    on_ready is called once the FIFO exists (the service tells systemd, so that keepalived,
    ordered after us, finds our FIFO). When cancelled, events already read get flush_seconds to
    reach the database. on_master gets the MASTER event and the time vrrp_events records for
    it. When this node leaves MASTER, on_leave runs at once (it holds the
    queue), then on_return with the time this node left MASTER and what on_leave returned; a
    node whose Postfix check flaps leaves MASTER again while the last reconcile still waits for
    the peer, and those reconciles run one after another, never side by side on the same queue.
    """
    fifo_path, state_file = Path(fifo_path), Path(state_file)
    ensure_fifo(fifo_path)
    queue: asyncio.Queue[_Pending] = asyncio.Queue()
    in_flight: list[_Pending] = []
    recorder = asyncio.create_task(_record(queue, node_id, in_flight), name="vrrp-record")
    hooks: set[asyncio.Task[object]] = set()
    returns = asyncio.Lock()

    async def returned(event: Notification, left_at: dt.datetime) -> object:
        # Not behind an earlier reconcile that still waits for the peer.
        left = None if on_leave is None else await on_leave(event)
        if on_return is None:
            return left
        async with returns:
            return await on_return(event, left_at, left)

    last_state = _last_reported_state(state_file, node_id)
    if on_ready is not None:
        on_ready()
    try:
        async with contextlib.aclosing(read_lines(fifo_path)) as lines:
            async for line in lines:
                event = parse_line(line)
                if event is None:
                    if line.strip():
                        log.info("ignored notify FIFO line %r", line)
                    continue
                if not event.is_state_change:
                    log.info(
                        "keepalived: %s %s %s %s",
                        event.kind,
                        event.name,
                        event.state,
                        event.priority,
                    )
                    continue
                if len(event.name) > 64:
                    log.warning("instance name too long to record: %r", event.name)
                    continue
                at = dt.datetime.now(dt.UTC)
                log.info("VRRP %s is %s (priority %s)", event.name, event.state, event.priority)
                try:
                    write_state(state_file, node_id, event, at)
                except OSError as exc:
                    log.error("cannot write the state file %s: %s", state_file, exc)
                queue.put_nowait(_Pending(at, event))
                hook: Awaitable[object] | None = None
                if event.state == "MASTER" and on_master is not None:
                    hook = on_master(event, at)
                elif last_state == "MASTER" and (on_leave or on_return) is not None:
                    # MASTER -> BACKUP, FAULT (Postfix stopped answering) or STOP (keepalived
                    # stopped): the peer takes over this node's queue; this copy is stale.
                    hook = returned(event, at)
                last_state = event.state
                if hook is not None:
                    # Hooks run beside the reader: later events must not wait for them.
                    hooks.add(asyncio.ensure_future(hook))
                    hooks = {t for t in hooks if not t.done()}
                if recorder.done():  # it only ends on a bug: make that loud
                    recorder.result()
    finally:
        if not recorder.done() and (in_flight or not queue.empty()):
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(queue.join()), timeout=flush_seconds)
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
        lost = in_flight + [queue.get_nowait() for _ in range(queue.qsize())]
        for item in lost:
            log.error(
                "not recorded in vrrp_events: %s %s %s (priority %s) at %s",
                node_id,
                item.event.name,
                item.event.state,
                item.event.priority,
                item.at.isoformat(),
            )


# -- the service ----------------------------------------------------------------------------------


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) something; nothing happens when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def service_hooks(settings: Settings, agent: AgentClient) -> dict[str, Any]:
    """What the service does on the events (run()'s on_master, on_leave, on_return): import
    the peer's replica on becoming MASTER; hold this node's queue on leaving MASTER, then
    reconcile it once the peer has taken over."""

    async def promote(event: Notification, at: dt.datetime) -> object:
        transition = f"{event.state} {event.priority} at {at:%Y-%m-%dT%H:%M:%SZ}"
        return await promotion.run_once(settings.node_id, agent, at, transition)

    async def hold(event: Notification) -> list[str]:
        return await reconcile.hold_on_leaving(settings, agent)

    async def come_back(event: Notification, left_at: dt.datetime, held: list[str]) -> object:
        try:
            return await reconcile.after_leaving_master(settings, agent, left_at, held)
        except Exception:
            # This task is not awaited: what leaving held must not stay held uncounted.
            log.exception("reconcile after leaving MASTER failed; the mail held stays held")
            reconcile.keep_held_for_release(settings)
            raise

    return {"on_master": promote, "on_leave": hold, "on_return": come_back}


def main(argv: list[str] | None = None) -> int:
    """`python -m app.cluster.vrrp`: the body of mailrelay-vrrp-events.service."""
    top = argparse.ArgumentParser(description="record keepalived's VRRP state changes")
    top.add_argument("--fifo", type=Path, default=FIFO_PATH, help=f"default {FIFO_PATH}")
    top.add_argument("--state-file", type=Path, default=STATE_FILE, help=f"default {STATE_FILE}")
    args = top.parse_args(argv)
    logsetup.configure()
    try:
        settings = load_settings()
    except SettingsError as exc:
        log.error("%s", exc)
        return 1
    # Piccolo reads these when it first builds its engine.
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ.setdefault("PICCOLO_CONF", "app.piccolo_conf")

    async def serve() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        agent = AgentClient(settings.agent_socket)
        hooks = service_hooks(settings, agent)
        started = dt.datetime.now(dt.UTC)
        still_master = _last_reported_state(args.state_file, settings.node_id) == "MASTER"
        resuming = asyncio.create_task(
            promotion.resume(
                settings.node_id, started, agent if still_master else None, settings.vip_address
            )
        )
        with contextlib.suppress(asyncio.CancelledError):
            await run(
                args.fifo,
                settings.node_id,
                args.state_file,
                on_ready=lambda: _sd_notify("READY=1"),
                **hooks,
            )
        resuming.cancel()
        _sd_notify("STOPPING=1")

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
