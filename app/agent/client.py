"""How the web app and the jobs talk to the agent: one typed method per verb of
app/agent/protocol.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, cast

from app.agent import protocol as p
from app.agent.protocol import Request
from app.messages import Message, decoded

R = TypeVar("R")
# Work of the caller's to do while the agent works on its request (see AgentClient._call).
Meanwhile = Callable[[], Awaitable[None]]


class AgentUnavailable(Exception):
    """The agent's socket cannot be reached."""


class AgentRefused(Exception):
    """The agent answered with an error."""


def _maps(
    verb: p.Verb[p.MapsArgs, p.MapsAnswer], version: int, files: dict[str, bytes]
) -> Request[p.MapsAnswer]:
    """A check or an apply of `files`: their sizes in the arguments, their bytes as the
    payload, in the same order."""
    sizes = {name: len(content) for name, content in files.items()}
    return verb({"version": version, "files": sizes}, b"".join(files.values()))


def _with_messages(answer: R) -> R:
    """An answer with its texts as the messages the agent sent (app.messages.encoded): a
    check's `problems`, a sync's `error`. Not checked beyond that, as in `_call`."""
    if not isinstance(answer, dict):
        return answer
    decoded_answer = dict(answer)
    if isinstance(answer.get("problems"), list):
        decoded_answer["problems"] = [decoded(p, str(p)) for p in answer["problems"]]
    if "error" in answer:
        decoded_answer["error"] = decoded(answer["error"], str(answer["error"] or ""))
    return cast(R, decoded_answer)


class AgentClient:
    def __init__(self, socket_path: Path, timeout: float = 300.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def _call(self, request: Request[R], meanwhile: Meanwhile | None = None) -> R:
        """The request's answer. `meanwhile` runs once the request is sent, while the agent
        works, and has ended when this returns (or raises, after the request was sent)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket_path), limit=256 * 1024 * 1024),
                timeout=5,
            )
        except (OSError, TimeoutError) as exc:
            # The reason is the operating system's own text (strerror): kept as it is, inside
            # a sentence of ours that is translated.
            raise AgentUnavailable(
                Message(
                    "the privileged agent is not reachable at {path}: {error}",
                    path=str(self.socket_path),
                    error=str(exc) or type(exc).__name__,
                )
            ) from None
        work: asyncio.Future[None] | None = None
        try:
            head: dict[str, object] = {"verb": request.verb, "args": request.args}
            if request.payload:
                head["payload"] = len(request.payload)
            writer.write(json.dumps(head).encode() + b"\n")
            writer.write(request.payload)
            await writer.drain()
            if meanwhile is not None:
                work = asyncio.ensure_future(meanwhile())
            line = await asyncio.wait_for(reader.readline(), timeout=self.timeout)
        finally:
            writer.close()
            if work is not None:
                await work
        if not line:
            raise AgentUnavailable(Message("the agent closed the connection without an answer"))
        answer = json.loads(line)
        if not answer.get("ok"):
            english = str(answer.get("error") or Message("unknown error"))
            raise AgentRefused(decoded(answer.get("message"), english))
        # Not checked here: the server's handlers are typed against the same protocol.
        return cast(R, answer.get("result"))

    # -- Postfix and its maps -----------------------------------------------------------------

    async def status(self) -> p.PostfixStatus:
        return await self._call(p.STATUS({}))

    async def check(
        self, version: int, files: dict[str, bytes], *, meanwhile: Meanwhile | None = None
    ) -> p.MapsAnswer:
        """Build and check a set of maps in a scratch directory; nothing goes live."""
        answer = await self._call(_maps(p.CHECK, version, files), meanwhile)
        return _with_messages(answer)

    async def apply(
        self, version: int, files: dict[str, bytes], *, meanwhile: Meanwhile | None = None
    ) -> p.MapsAnswer:
        """Check, swap in and reload; on a failure the previous maps stay live."""
        answer = await self._call(_maps(p.APPLY, version, files), meanwhile)
        return _with_messages(answer)

    async def reload(self) -> None:
        await self._call(p.RELOAD({}))

    # -- the queue ----------------------------------------------------------------------------

    async def queue_list(self, limit: int = 1000) -> list[p.PostqueueEntry]:
        return await self._call(p.QUEUE_LIST({"limit": limit}))

    async def hold(self, queue_id: str) -> None:
        await self._call(p.HOLD({"queue_id": queue_id}))

    async def release(self, queue_id: str) -> None:
        await self._call(p.RELEASE({"queue_id": queue_id}))

    async def delete(self, queue_id: str) -> None:
        await self._call(p.DELETE({"queue_id": queue_id}))

    async def requeue(self, queue_id: str) -> None:
        await self._call(p.REQUEUE({"queue_id": queue_id}))

    async def flush(self, queue_id: str) -> None:
        await self._call(p.FLUSH({"queue_id": queue_id}))

    async def queue_action(self, action: str, queue_id: str) -> None:
        """One of the per-message verbs by its name (hold, release, delete, requeue, flush),
        for a screen that offers them all."""
        verb = p.QUEUE_ACTIONS.get(action)
        if verb is None:
            raise AgentRefused(Message("unknown verb {verb}", verb=repr(action)))
        await self._call(verb({"queue_id": queue_id}))

    async def flush_all(self) -> None:
        await self._call(p.FLUSH_ALL({}))

    # -- replication --------------------------------------------------------------------------

    async def queue_sync(self, freeze: p.FreezeMode) -> p.SyncAnswer:
        return _with_messages(await self._call(p.QUEUE_SYNC({"freeze": freeze})))

    async def import_replica(self, takeover: str) -> p.ReplicaImportAnswer:
        return await self._call(p.IMPORT_REPLICA({"takeover": takeover}))

    async def hold_all(self) -> list[str]:
        """Hold the whole queue; the IDs held by this call."""
        return await self._call(p.HOLD_ALL({}))

    async def delete_ids(self, queue_ids: list[str]) -> int:
        return await self._call(p.DELETE_IDS({"queue_ids": queue_ids}))

    async def release_ids(self, queue_ids: list[str]) -> int:
        return await self._call(p.RELEASE_IDS({"queue_ids": queue_ids}))

    # -- the VIP ------------------------------------------------------------------------------

    async def vip_held(self, vip: str) -> bool:
        return await self._call(p.VIP_HELD({"vip": vip}))

    async def vip_handover(self, vip: str, timeout: float = 10) -> p.Handover:
        return await self._call(p.VIP_HANDOVER({"vip": vip, "timeout": timeout}))
