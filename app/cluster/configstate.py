"""Which config version each node runs, in the master's numbering; whether this node is ready
(runs what the master applied); and how long the nodes have run different versions.

What the other node runs is as last heard: on the master, a slave's report after each pull; on
a slave, the master's export. A node not heard from for a minute is `silent`: its figure may be
stale. The nodes "differ" when one runs another version than the master applied; they have
differed since the later of the two applies (neither changed after it), and past
CONFIG_DRIFT_ALERT_SECONDS that is an alert.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from app.cluster import pull
from app.config import applied
from app.settings import Settings

# A slave reports after every pull (every 10 s) and hears the master as often: a minute of
# silence means the other node's figure is not current.
SILENT_AFTER = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class NodeVersion:
    node_id: str
    own: bool
    number: int  # the node's own row: its local number; the other node's: the master's numbering
    master_number: int | None  # what it runs in the master's numbering; None: not from the master
    since: dt.datetime
    heard_at: dt.datetime | None  # None on this node's own row
    silent: bool


@dataclass
class ConfigState:
    cluster_mode: str
    nodes: list[NodeVersion] = field(default_factory=list)
    master_applied: int | None = None  # the version the master runs, as far as this node knows
    differ_since: dt.datetime | None = None
    differ_seconds: float | None = None
    drift: bool = False  # differed longer than CONFIG_DRIFT_ALERT_SECONDS
    ready: bool = False
    # Why not ready: an English text with %s places (the i18n key) and its values.
    why_not: tuple[str, tuple[object, ...]] = ("", ())

    @property
    def why_not_ready(self) -> str:
        text, values = self.why_not
        return text % values if values else text

    def node(self, node_id: str) -> NodeVersion | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)


async def current(settings: Settings) -> ConfigState:
    now = dt.datetime.now(dt.UTC)
    master = settings.cluster_mode == "master"
    state = ConfigState(settings.cluster_mode)
    rows = await applied.every()
    for node_id in sorted(rows, key=lambda n: (n != settings.node_id, n)):
        row, own = rows[node_id], node_id == settings.node_id
        if own and not master:
            mine = await pull.applied_state(node_id)
            master_number = mine["master_number"] if mine else None
        else:
            master_number = row["number"]
        heard = None if own else row["reported_at"]
        state.nodes.append(
            NodeVersion(
                node_id,
                own,
                row["number"],
                master_number,
                row["applied_at"],
                heard,
                heard is not None and now - heard > SILENT_AFTER,
            )
        )
    the_master = next((n for n in state.nodes if n.own == master), None)
    if the_master is not None:
        state.master_applied = the_master.master_number
    _readiness(state, settings)
    _drift(state, now, settings.config_drift_alert_seconds)
    return state


def _readiness(state: ConfigState, settings: Settings) -> None:
    own = state.node(settings.node_id)
    if settings.cluster_mode == "master":
        state.ready = own is not None
        if not state.ready:
            state.why_not = ("no config version is applied on this node yet", ())
    elif own is None or own.master_number is None:
        state.why_not = ("this node runs no version from the master yet", ())
    elif state.master_applied is None:
        state.why_not = ("the master has not told this node what it runs yet", ())
    elif own.master_number != state.master_applied:
        state.why_not = (
            "this node runs master version %s, the master runs %s",
            (own.master_number, state.master_applied),
        )
    else:
        state.ready = True


def _drift(state: ConfigState, now: dt.datetime, alert_after: float) -> None:
    if state.master_applied is None:
        return
    differing = [n for n in state.nodes if n.master_number != state.master_applied]
    if not differing:
        return
    state.differ_since = max(n.since for n in state.nodes)
    state.differ_seconds = max((now - state.differ_since).total_seconds(), 0.0)
    state.drift = state.differ_seconds > alert_after
