"""The agent's verbs, each with its arguments and its answer: the one definition that the
server's verb table (app/agent/server.py) and the client's methods (app/agent/client.py) are
both built on, so that neither can offer a verb the other lacks.

On the wire a request is one JSON line {"verb": NAME, "args": ARGS} and the answer
{"ok": true, "result": RESULT} or {"ok": false, "error": "..."}. A request that carries files
(the maps of a check or an apply) says {"payload": N} beside them, and N bytes follow its line
as they are: at 100,000 sender domains the maps are 6 MB, which as base64 inside the JSON line
cost an Apply a tenth of a second to encode, send and decode. The server trusts nothing in
ARGS or the payload (it checks every field itself); the types here say what a well-behaved
client sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, NotRequired, TypedDict, TypeVar

from app.settings import FreezeMode

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class Request(Generic[R]):
    """One call of a verb, answered with an R."""

    verb: str
    args: object
    payload: bytes = b""


@dataclass(frozen=True)
class Verb(Generic[A, R]):
    """A verb's name on the wire; A is the type of its arguments, R of its result."""

    name: str

    def __call__(self, args: A, payload: bytes = b"") -> Request[R]:
        return Request(self.name, args, payload)


# -- arguments --------------------------------------------------------------------------------


class NoArgs(TypedDict):
    pass


class MapsArgs(TypedDict):
    version: int
    files: dict[str, int]  # map name -> its size; the contents follow as the payload, in order


class QueueListArgs(TypedDict):
    limit: int


class QueueSyncArgs(TypedDict):
    freeze: FreezeMode


class QueueIdsArgs(TypedDict):
    queue_ids: list[str]


class QueueIdArgs(TypedDict):
    queue_id: str


class VipArgs(TypedDict):
    vip: str


class ImportArgs(TypedDict):
    # Which takeover this try belongs to (the time of its MASTER event): tries of the same
    # takeover share app/agent/takeover_journal.py.
    takeover: str


class HandoverArgs(TypedDict):
    vip: str
    timeout: float


# -- results ----------------------------------------------------------------------------------


class FilesAndBytes(TypedDict):
    files: int
    bytes: int


class ShadowStatus(TypedDict):
    stored: int
    bytes: int
    unprotected_total: int
    last_unprotected_at: Any  # what the milter's counter file holds (an ISO time) or None
    milter: str


class PostfixStatus(TypedDict):
    postfix_running: bool
    postfix_version: str
    live_maps_version: int | None
    queue: dict[str, int]  # files per queue directory
    replica: FilesAndBytes  # the peer's queue copied here
    shadow: ShadowStatus


class MapsAnswer(TypedDict):
    version: int
    # Texts; on the wire a message is its key and parameters (app.messages.encoded), which
    # the client turns into a Message again.
    problems: list[Any]
    applied: bool


class SyncAnswer(TypedDict):
    mode: str
    ok: bool
    error: Any  # a text; on the wire a message as app.messages.encoded writes it
    duration: float
    freeze_seconds: float
    files: int
    bytes: int
    passes: list[str]


class Refusal(TypedDict):
    path: str
    reason: str


class ImportAnswer(TypedDict):
    imported: list[str]
    refused: list[Refusal]
    refused_total: int
    incomplete: int


class ReplicaImportAnswer(ImportAnswer):
    shadows: ImportAnswer  # the peer's shadow copies the replica did not cover
    # What earlier tries of the same takeover took (the returning peer deletes those too).
    earlier: list[str]
    # Why the takeover stopped before its end; what it took before is listed all the same.
    error: NotRequired[str]


class Handover(TypedDict):
    released_seconds: float
    seconds: float


# One entry of `postqueue -j` as Postfix prints it (app/postfix/queue.py reads it).
PostqueueEntry = dict[str, Any]

# -- the verbs --------------------------------------------------------------------------------

STATUS: Verb[NoArgs, PostfixStatus] = Verb("status")
CHECK: Verb[MapsArgs, MapsAnswer] = Verb("check")
APPLY: Verb[MapsArgs, MapsAnswer] = Verb("apply")
RELOAD: Verb[NoArgs, None] = Verb("reload")
QUEUE_LIST: Verb[QueueListArgs, list[PostqueueEntry]] = Verb("queue_list")
QUEUE_SYNC: Verb[QueueSyncArgs, SyncAnswer] = Verb("queue_sync")
IMPORT_REPLICA: Verb[ImportArgs, ReplicaImportAnswer] = Verb("import_replica")
HOLD_ALL: Verb[NoArgs, list[str]] = Verb("hold_all")  # the queue IDs it held
DELETE_IDS: Verb[QueueIdsArgs, int] = Verb("delete_ids")  # how many were given to postsuper
RELEASE_IDS: Verb[QueueIdsArgs, int] = Verb("release_ids")
FLUSH_ALL: Verb[NoArgs, None] = Verb("flush_all")
VIP_HANDOVER: Verb[HandoverArgs, Handover] = Verb("vip_handover")
VIP_HELD: Verb[VipArgs, bool] = Verb("vip_held")
HOLD: Verb[QueueIdArgs, None] = Verb("hold")
RELEASE: Verb[QueueIdArgs, None] = Verb("release")
DELETE: Verb[QueueIdArgs, None] = Verb("delete")
REQUEUE: Verb[QueueIdArgs, None] = Verb("requeue")
FLUSH: Verb[QueueIdArgs, None] = Verb("flush")

QUEUE_ACTIONS: dict[str, Verb[QueueIdArgs, None]] = {
    verb.name: verb for verb in (HOLD, RELEASE, DELETE, REQUEUE, FLUSH)
}
VERBS: tuple[Verb[Any, Any], ...] = (
    STATUS,
    CHECK,
    APPLY,
    RELOAD,
    QUEUE_LIST,
    QUEUE_SYNC,
    IMPORT_REPLICA,
    HOLD_ALL,
    DELETE_IDS,
    RELEASE_IDS,
    FLUSH_ALL,
    VIP_HANDOVER,
    VIP_HELD,
    *QUEUE_ACTIONS.values(),
)
NAMES: frozenset[str] = frozenset(verb.name for verb in VERBS)


def names(*verbs: Verb[Any, Any]) -> frozenset[str]:
    """The wire names of some verbs (for the callers' allow-list, app/agent/callers.py)."""
    return frozenset(verb.name for verb in verbs)
