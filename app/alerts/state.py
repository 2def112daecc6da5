"""The alerts' memory in PostgreSQL: which conditions hold since when, and what each channel
was last told.

Every timer fires on its own and an operator may run `mailrelay alerts` by hand meanwhile: a
notice is claimed with a conditional UPDATE (what the channel was told and when, as this run
read it), so that of two runs at once only one sends it; the other finds the row changed. A
claim stays marked as sending until the send is confirmed, so that a run killed in between
leaves a notice that a later run sends (at least once, rather than at most once).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from piccolo.table import Table

from app.alerts.conditions import TITLES, Finding


class _Raw(Table):
    pass


# Longer than any run of the alerts job lives (its unit stops one after 5 minutes): a claim
# this old whose send was never confirmed belongs to a run that died.
SEND_LEASE = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class Alert:
    key: str
    active: bool
    since: dt.datetime
    text: str
    values: tuple[str, ...]
    figure: float | None

    @property
    def summary(self) -> str:
        return self.text % self.values if self.values else self.text

    @property
    def title(self) -> str:
        return TITLES.get(self.key, self.key)


@dataclass(frozen=True)
class Notice:
    """What one channel was last told about one alert."""

    key: str
    channel: str
    reported: bool  # True: "started", False: "cleared" (or never told anything)
    last_sent_at: dt.datetime | None


async def figures(node_id: str) -> dict[str, float | None]:
    rows = await _Raw.raw("SELECT key, figure FROM alert_state WHERE node_id = {}", node_id)
    return {row["key"]: row["figure"] for row in rows}


async def record(node_id: str, findings: list[Finding], now: dt.datetime) -> list[Alert]:
    """Store this run's findings; an alert's `since` moves only when its condition turns.
    Returns every alert of the node (the unjudged ones as they were)."""
    if findings:
        await _Raw.raw(
            "INSERT INTO alert_state AS s (node_id, key, active, since, text, text_values, "
            "figure, checked_at) "
            "SELECT {}, key, active, {}, text, ARRAY(SELECT jsonb_array_elements_text(vals)), "
            "figure, {} "
            "FROM unnest({}::varchar[], {}::boolean[], {}::text[], {}::jsonb[], {}::float8[]) "
            "AS f (key, active, text, vals, figure) "
            "ON CONFLICT (node_id, key) DO UPDATE SET "
            "since = CASE WHEN s.active = EXCLUDED.active THEN s.since ELSE EXCLUDED.since END, "
            "active = EXCLUDED.active, text = EXCLUDED.text, text_values = EXCLUDED.text_values, "
            "figure = EXCLUDED.figure, checked_at = EXCLUDED.checked_at",
            node_id,
            now,
            now,
            [f.key for f in findings],
            [f.active for f in findings],
            [f.text for f in findings],
            # text[][] cannot be ragged: each finding's values travel as one JSON array.
            [json.dumps(list(f.values)) for f in findings],
            [f.figure for f in findings],
        )
    return await alerts(node_id)


async def alerts(node_id: str) -> list[Alert]:
    rows = await _Raw.raw(
        "SELECT key, active, since, text, text_values, figure FROM alert_state "
        "WHERE node_id = {} "
        "ORDER BY key",
        node_id,
    )
    return [_alert(row) for row in rows]


async def active(node_id: str) -> list[Alert]:
    """The alerts whose condition holds, oldest first (for the dashboard)."""
    return sorted((a for a in await alerts(node_id) if a.active), key=lambda a: (a.since, a.key))


def _alert(row: dict) -> Alert:
    values = tuple(row["text_values"])
    return Alert(row["key"], row["active"], row["since"], row["text"], values, row["figure"])


async def notices(
    node_id: str, channels: list[str], now: dt.datetime
) -> dict[tuple[str, str], Notice]:
    """Each alert's notice row per channel, made (told nothing yet) where it is missing. A
    claim older than SEND_LEASE whose send was never confirmed is undone first: its run died
    between the two, and the channel was never told. So is one dated later than SEND_LEASE
    ahead: made while the clock was ahead, it would otherwise wait as long."""
    await _Raw.raw(
        "UPDATE alert_notices SET reported = NOT reported, last_sent_at = NULL, "
        "sending_since = NULL, last_error = {} "
        "WHERE node_id = {} AND (sending_since < {} OR sending_since > {})",
        "the run that was sending this notice stopped before it was sent",
        node_id,
        now - SEND_LEASE,
        now + SEND_LEASE,
    )
    await _Raw.raw(
        "INSERT INTO alert_notices (node_id, key, channel) "
        "SELECT {}, s.key, c.channel FROM alert_state AS s, unnest({}::varchar[]) AS c (channel) "
        "WHERE s.node_id = {} ON CONFLICT DO NOTHING",
        node_id,
        channels,
        node_id,
    )
    rows = await _Raw.raw(
        "SELECT key, channel, reported, last_sent_at FROM alert_notices "
        "WHERE node_id = {} AND channel = ANY({}::varchar[])",
        node_id,
        channels,
    )
    return {
        (r["key"], r["channel"]): Notice(r["key"], r["channel"], r["reported"], r["last_sent_at"])
        for r in rows
    }


async def claim(node_id: str, notice: Notice, state: bool, now: dt.datetime) -> bool:
    """Take the sending of `state` to this channel; False: another run changed it first."""
    rows = await _Raw.raw(
        "UPDATE alert_notices SET reported = {}, last_sent_at = {}, sending_since = {} "
        "WHERE node_id = {} AND key = {} AND channel = {} AND reported = {} "
        "AND last_sent_at IS NOT DISTINCT FROM {} RETURNING key",
        state,
        now,
        now,
        node_id,
        notice.key,
        notice.channel,
        notice.reported,
        notice.last_sent_at,
    )
    return bool(rows)


async def sent(node_id: str, notice: Notice) -> None:
    await _Raw.raw(
        "UPDATE alert_notices SET last_error = '', sending_since = NULL "
        "WHERE node_id = {} AND key = {} AND channel = {}",
        node_id,
        notice.key,
        notice.channel,
    )


async def failed(node_id: str, notice: Notice, claimed_at: dt.datetime, error: str) -> None:
    """Undo a claim whose sending failed, so that the next run tries again."""
    await _Raw.raw(
        "UPDATE alert_notices SET reported = {}, last_sent_at = {}, last_error = {}, "
        "sending_since = NULL "
        "WHERE node_id = {} AND key = {} AND channel = {} AND last_sent_at = {}",
        notice.reported,
        notice.last_sent_at,
        error[:2000],
        node_id,
        notice.key,
        notice.channel,
        claimed_at,
    )
