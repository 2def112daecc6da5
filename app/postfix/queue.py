"""The mail queue as `postqueue -j` describes it, and the filters of the queue page."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

ACTIONS = ("hold", "release", "delete", "requeue", "flush")


@dataclass(frozen=True)
class QueueEntry:
    queue_id: str
    queue_name: str  # incoming | active | deferred | hold | maildrop
    arrival: dt.datetime
    size: int
    sender: str
    recipients: list[str]
    reasons: list[str]

    @classmethod
    def from_postqueue(cls, raw: dict[str, Any]) -> QueueEntry:
        recipients = raw.get("recipients") or []
        return cls(
            queue_id=str(raw.get("queue_id", "")),
            queue_name=str(raw.get("queue_name", "")),
            arrival=dt.datetime.fromtimestamp(int(raw.get("arrival_time", 0)), dt.UTC),
            size=int(raw.get("message_size", 0)),
            sender=str(raw.get("sender", "")),
            recipients=[str(r.get("address", "")) for r in recipients],
            reasons=sorted({str(r["delay_reason"]) for r in recipients if r.get("delay_reason")}),
        )

    def age(self, now: dt.datetime) -> dt.timedelta:
        return now - self.arrival


def matches(entry: QueueEntry, sender: str, recipient: str, queue_name: str, reason: str) -> bool:
    def has(text: str, needle: str) -> bool:
        return needle.lower() in text.lower()

    return (
        (not sender or has(entry.sender, sender))
        and (not recipient or any(has(r, recipient) for r in entry.recipients))
        and (not queue_name or entry.queue_name == queue_name)
        and (not reason or any(has(r, reason) for r in entry.reasons))
    )
