"""The agent: a small root service on a unix socket with a fixed set of verbs.

One JSON object per line in each direction. The caller is identified by the kernel
(SO_PEERCRED and its systemd unit, app/agent/callers.py) and may use only its unit's verbs.
Every call is logged with the caller and its outcome. Under systemd the socket comes from
socket activation (LISTEN_FDS); otherwise the agent binds the path itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from app.agent import callers, queuesync, replica, vip
from app.agent import protocol as p
from app.agent.callers import Caller
from app.agent.postfix import QUEUE_ID_RE, AgentError, PostfixTools
from app.agent.takeover_journal import JournalError, TakeoverJournal
from app.messages import Message, encoded, message_of
from app.replication import shadow_import, sync_mark
from app.settings import AgentSettings

log = logging.getLogger("mailrelay.agent")
MAX_REQUEST = 256 * 1024 * 1024
# Where a request's payload reaches its handler, beside the arguments: a key that JSON cannot
# fill with bytes, so arguments that name it themselves are refused as not bytes.
PAYLOAD = "payload"
QUEUE_LIMIT_MAX = 100_000
R = TypeVar("R")
Handler = Callable[[dict[str, Any]], object]


def _on(verb: p.Verb[Any, R], handler: Callable[[dict[str, Any]], R]) -> tuple[str, Handler]:
    """One entry of the verb table; the handler must answer what the protocol says."""
    return verb.name, handler


def _files(args: dict[str, Any]) -> tuple[int, dict[str, bytes]]:
    """The version and its map files: `files` names each map with its size, and the payload
    (which the server put under PAYLOAD) holds their contents one after another."""
    version = args.get("version")
    files = args.get("files")
    payload = args.get(PAYLOAD)
    if not isinstance(version, int) or version < 1:
        raise AgentError(Message("version must be a positive integer"))
    if (
        not isinstance(files, dict)
        or not all(type(size) is int and size >= 0 for size in files.values())
        or not isinstance(payload, bytes)
        or sum(files.values()) != len(payload)
    ):
        raise AgentError(Message("files must name each map with its size in the payload"))
    contents: dict[str, bytes] = {}
    start = 0
    for name, size in files.items():
        contents[str(name)] = payload[start : start + size]
        start += size
    return version, contents


def _queue_ids(args: dict[str, Any]) -> list[str]:
    ids = args.get("queue_ids")
    if not isinstance(ids, list) or len(ids) > 1_000_000:
        raise AgentError(Message("queue_ids must be a list of queue IDs"))
    for queue_id in ids:
        if not isinstance(queue_id, str) or not QUEUE_ID_RE.match(queue_id):
            raise AgentError(Message("not a queue ID: {queue_id}", queue_id=repr(queue_id)))
    return ids


def _vip_address(args: dict[str, Any]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(args.get("vip")))
    except ValueError:
        raise AgentError(Message("vip must be an IP address")) from None


def _handover(args: dict[str, Any]) -> p.Handover:
    address = _vip_address(args)
    timeout = args.get("timeout", 10)
    if not isinstance(timeout, int | float) or not 1 <= timeout <= 60:
        raise AgentError(Message("timeout must be 1-60 seconds"))
    return vip.handover(address, float(timeout))


def _queue_id(args: dict[str, Any]) -> str:
    queue_id = args.get("queue_id")
    if not isinstance(queue_id, str):
        raise AgentError(Message("queue_id is required"))
    return queue_id


def _refused(error: str) -> dict[str, Any]:
    """A refusal: `error` in English (the agent's log, older callers), `message` for the
    caller to show in its user's language."""
    return {"ok": False, "error": str(error), "message": encoded(error)}


class Agent:
    def __init__(self, tools: PostfixTools, settings: AgentSettings) -> None:
        self.tools = tools
        self.settings = settings
        # One change at a time: two applies must not interleave their swaps and reloads.
        self.lock = asyncio.Lock()
        self.verbs: dict[str, Handler] = dict(
            [
                _on(p.STATUS, lambda a: self.tools.status()),
                _on(p.CHECK, lambda a: self.tools.check_maps(*_files(a)).as_dict()),
                _on(p.APPLY, lambda a: self.tools.apply_maps(*_files(a)).as_dict()),
                _on(p.RELOAD, lambda a: self.tools.reload()),
                _on(p.QUEUE_LIST, self._queue_list),
                _on(p.QUEUE_SYNC, self._queue_sync),
                _on(p.IMPORT_REPLICA, self._import_replica),
                _on(p.HOLD_ALL, lambda a: queuesync.hold_all()),
                _on(p.DELETE_IDS, lambda a: queuesync.postsuper_ids("-d", _queue_ids(a))),
                _on(p.RELEASE_IDS, lambda a: queuesync.postsuper_ids("-H", _queue_ids(a))),
                _on(p.FLUSH_ALL, lambda a: self.tools.flush_all()),
                _on(p.VIP_HANDOVER, _handover),
                # For a web app in a container, which sees its own network namespace, not the
                # host's interfaces.
                _on(p.VIP_HELD, lambda a: vip.present(_vip_address(a))),
                *[_on(verb, self._queue_action(name)) for name, verb in p.QUEUE_ACTIONS.items()],
            ]
        )
        if drift := set(self.verbs) ^ p.NAMES:
            raise RuntimeError(f"the agent's verbs differ from the protocol's: {sorted(drift)}")

    def _queue_action(self, action: str) -> Callable[[dict[str, Any]], None]:
        return lambda args: self.tools.queue_action(action, _queue_id(args))

    def _queue_sync(self, args: dict[str, Any]) -> p.SyncAnswer:
        mode = args.get("freeze", "freeze")
        if mode not in queuesync.FREEZE_MODES:
            raise AgentError(
                Message(
                    "freeze must be one of {modes}",
                    modes=", ".join(queuesync.FREEZE_MODES),
                )
            )
        try:
            config = queuesync.SyncConfig.from_settings(self.settings.sync)
        except queuesync.SyncError as exc:
            raise AgentError(message_of(exc)) from None
        return queuesync.sync(config, mode).as_dict()

    def _import_replica(self, args: dict[str, Any]) -> p.ReplicaImportAnswer:
        """The replica into the live queue (app/agent/replica.py), then the shadows it does
        not cover (app/replication/shadow_import.py); the mail either may take is that of the
        sender domains in the maps this agent applied. What earlier tries of the same takeover
        took (app/agent/takeover_journal.py) is neither taken again nor left out."""
        key = args.get("takeover")
        if not isinstance(key, str):
            raise AgentError(Message("takeover is required"))
        try:
            journal = TakeoverJournal(self.settings.takeover_journal, key)
        except JournalError as exc:
            raise AgentError(message_of(exc)) from None
        allowed = replica.allowed_domains(self.tools.maps_root / "live" / "sender_access")
        coverage = sync_mark.read(
            self.tools.replica / sync_mark.NAME, self.settings.shadow_timeout_ms / 1000
        )
        try:
            limits = replica.Limits.of(
                self.settings.replica_max_file_bytes,
                self.settings.replica_max_files,
                self.tools.message_size_limit(),
            )
            report = replica.import_replica(
                self.tools.replica,
                self.tools.queue_directory(),
                limits,
                allowed,
                lambda ids: queuesync.postsuper_ids("-r", ids),
                journal.before["replica"],
                lambda ids: journal.took("replica", ids),
            )
        except (replica.ReplicaError, queuesync.SyncError) as exc:
            raise AgentError(message_of(exc)) from None
        shadows = shadow_import.import_shadows(
            self.tools.shadow_store,
            # A replica file an earlier try took is gone from the replica, not from the store.
            report.covered | journal.taken["replica"] | journal.taken["shadow"],
            coverage,
            allowed,
            limits.max_file_bytes,
            write_down=lambda ids: journal.took("shadow", ids),
        )
        if report.imported:
            self.tools.flush_all()
        answer: p.ReplicaImportAnswer = {
            **report.as_dict(),
            "shadows": shadows.as_dict(),
            "earlier": journal.earlier(),
        }
        if shadows.error:
            # What was taken is in the answer all the same: the promotion records it, and the
            # returning peer deletes it, whatever the try that finishes the takeover takes.
            answer["error"] = shadows.error
        return answer

    def _queue_list(self, args: dict[str, Any]) -> list[p.PostqueueEntry]:
        limit = args.get("limit", 1000)
        if not isinstance(limit, int) or not 1 <= limit <= QUEUE_LIMIT_MAX:
            raise AgentError(Message("limit must be 1-{most}", most=QUEUE_LIMIT_MAX))
        return self.tools.queue_list(limit)

    async def handle(self, request: Any, caller: Caller) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("verb"), str):
            return _refused(Message("a request is {shape}", shape='{"verb": ..., "args": {...}}'))
        verb, args = request["verb"], request.get("args") or {}
        if verb not in self.verbs or not isinstance(args, dict):
            return _refused(Message("unknown verb {verb}", verb=repr(verb)))
        if not caller.may(verb):
            return _refused(callers.refusal(caller, verb))
        async with self.lock:
            try:
                result = await asyncio.to_thread(self.verbs[verb], args)
            except (AgentError, queuesync.SyncError) as exc:
                return _refused(message_of(exc))
            except OSError as exc:
                # An answer, not a dropped connection: the caller shows and audits it.
                log.exception("verb %s failed", verb)
                return _refused(Message("{verb} failed: {error}", verb=verb, error=str(exc)))
        return {"ok": True, "result": result}

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            peer = callers.of_socket(writer.get_extra_info("socket"))
        except (OSError, AttributeError) as exc:
            log.warning("connection refused: the caller cannot be identified: %s", exc)
            writer.close()
            return
        try:
            while line := await reader.readline():
                started = time.monotonic()
                try:
                    request = json.loads(line)
                except ValueError:
                    request = None
                if isinstance(request, dict) and "payload" in request:
                    request = await _with_payload(request, reader)
                response = await self.handle(request, peer)
                verb = request.get("verb") if isinstance(request, dict) else "?"
                log.info(
                    "call verb=%s peer=%s ok=%s %.0fms%s",
                    verb,
                    peer,
                    response["ok"],
                    (time.monotonic() - started) * 1000,
                    "" if response["ok"] else f" error={response['error']!r}",
                )
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as exc:
            log.warning("connection from %s dropped: %s", peer, exc)
        finally:
            writer.close()


async def _with_payload(request: dict[str, Any], reader: asyncio.StreamReader) -> dict[str, Any]:
    """The request with the bytes that follow its line under its arguments' PAYLOAD. A size
    that is not one the agent reads would leave the stream where no next line starts: the
    connection is dropped (ValueError)."""
    size = request["payload"]
    if type(size) is not int or not 0 <= size <= MAX_REQUEST:
        raise ValueError(Message("a payload of {size} bytes", size=repr(size)))
    payload = await reader.readexactly(size)
    args = request.get("args")
    return {**request, "args": {**args, PAYLOAD: payload} if isinstance(args, dict) else args}


def _activated_socket() -> socket.socket | None:
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=3)


async def serve(settings: AgentSettings) -> None:
    agent = Agent(PostfixTools.from_settings(settings), settings)
    socket_path = settings.socket
    sock = _activated_socket()
    if sock is not None:
        server = await asyncio.start_unix_server(
            agent.serve_connection, sock=sock, limit=MAX_REQUEST
        )
    else:
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(
            agent.serve_connection, path=str(socket_path), limit=MAX_REQUEST
        )
        os.chmod(socket_path, settings.socket_mode)
    log.info("agent listening on %s", socket_path)
    async with server:
        await server.serve_forever()
