"""The figures of a node for the cluster panel, the peer and /metrics.

A node's status: the VRRP state keepalived last reported here, whether this node holds the VIP
right now, the live queue and the replica of the peer's queue (the agent reads both: the web app
may read neither), the last queue-sync run and the last successful one, and the config version
this node runs. Each part is found out on its own; one that cannot be says why in its `unknown`
key instead of failing the whole status, and the dashboard shows everything else.

The status is plain JSON data: the peer's arrives as JSON (GET /api/cluster/status), and both
are shown and exported the same way. Ages are computed by the node that reports them, so the
two nodes' clocks need not agree.

A node's traffic (GET /api/cluster/traffic) is the dashboard's: its figures for the dashboard's
time windows and its deferred queue now, each node's from its own log and its own Postfix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
from typing import Any

from app import reports
from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.agent.protocol import PostfixStatus
from app.cluster import configstate, health
from app.cluster.peer import PeerApi, PeerError, json_object, peer_request
from app.cluster.vip import VipCheckError, vip_held
from app.db.tables import ConfigVersion, SyncRun, VrrpEvent
from app.messages import Message, decoded, encoded, joined, message_of
from app.replication import promotion
from app.settings import Settings

try:
    VERSION = importlib.metadata.version("mailrelay-ha")
except importlib.metadata.PackageNotFoundError:  # a checkout run without installing it
    VERSION = "unknown"

Status = dict[str, Any]

STATUS_PATH = "/api/cluster/status"
TRAFFIC_PATH = "/api/cluster/traffic"
# The dashboard waits for the peer's status: an unreachable peer must cost seconds, not the
# 10 s of a config pull. The peer's own status waits at most AGENT_TIMEOUT for its agent.
PEER_TIMEOUT = 3.0
# A status is a few kilobytes.
MAX_STATUS_BYTES = 1024 * 1024
# The agent runs one verb at a time: during a queue sync or a switchover its status waits.
AGENT_TIMEOUT = 2.0


# -- this node --------------------------------------------------------------------------------


async def node_status(settings: Settings, agent: AgentClient) -> Status:
    now = dt.datetime.now(dt.UTC)
    vip = await _vip(settings, agent)
    vrrp, queue, sync, config, traffic, alerts = await asyncio.gather(
        vrrp_state(settings.node_id),
        _queue(agent),
        _sync(settings.node_id, now, active=vip["held"] is not False),
        _config(settings),
        _traffic(settings.node_id),
        _alerts(settings.node_id),
    )
    return {
        "node_id": settings.node_id,
        "hostname": settings.hostname,
        "cluster_mode": settings.cluster_mode,
        "version": VERSION,
        "at": now.isoformat(),
        "vrrp": vrrp,
        "vip": vip,
        "queue": queue,
        "sync": sync,
        "config": config,
        "host": await asyncio.to_thread(health.host_facts, settings),
        "traffic": traffic,
        "alerts": alerts,
    }


async def vrrp_state(node_id: str) -> Status:
    """This node's last VRRP state since when; a MASTER's also says whether its takeover of the
    peer's queue has been written (promotion: None while it runs)."""
    row = (
        await VrrpEvent.select(VrrpEvent.state, VrrpEvent.at, VrrpEvent.priority)
        .where(VrrpEvent.node_id == node_id)
        .order_by(VrrpEvent.id, ascending=False)
        .first()
    )
    if row is None:
        return {
            "state": None,
            "unknown": Message("keepalived has reported no VRRP state on this node yet"),
        }
    state = {"state": row["state"], "since": row["at"].isoformat(), "priority": row["priority"]}
    if row["state"] == "MASTER":
        done = await promotion.finished(node_id, row["at"])
        state["promotion"] = None
        if done is not None:
            state["promotion"] = {
                "finished_at": done.finished_at.isoformat(),
                "imported": done.imported,
                "refused": done.refused,
                "error": done.error,
            }
    return state


async def _vip(settings: Settings, agent: AgentClient) -> Status:
    address = settings.vip_address
    if not address:
        return {"address": None, "held": None, "unknown": Message("VIP_ADDRESS is not set")}
    try:
        return {"address": address, "held": await asyncio.to_thread(vip_held, address)}
    except VipCheckError as exc:
        local = message_of(exc)
    # Under rootless Podman the app sees its container's interfaces, not the host's: the agent
    # (root, on the host) can tell.
    try:
        held = await asyncio.wait_for(agent.vip_held(address), AGENT_TIMEOUT)
    except (AgentUnavailable, AgentRefused, TimeoutError) as exc:
        why = _agent_error(exc)
        return {
            "address": address,
            "held": None,
            "unknown": joined("; ", [local, Message("agent: {error}", error=why)]),
        }
    return {"address": address, "held": bool(held)}


# The agent's status, or None and why there is none (agent_status).
AgentAnswer = tuple[PostfixStatus | None, str | None]


async def agent_status(agent: AgentClient) -> AgentAnswer:
    """The agent's status within AGENT_TIMEOUT, or None and why there is none."""
    try:
        return await asyncio.wait_for(agent.status(), AGENT_TIMEOUT), None
    except (AgentUnavailable, AgentRefused, TimeoutError) as exc:
        return None, _agent_error(exc)


async def _queue(agent: AgentClient, answer: AgentAnswer | None = None) -> Status:
    """The queue and replica figures of the agent's status: `answer` when the caller asked
    for it already, else asked now."""
    state, error = answer if answer is not None else await agent_status(agent)
    if state is None:
        return {
            "messages": None,
            "deferred": None,
            "replica_files": None,
            "replica_bytes": None,
            "shadow_stored": None,
            "shadow_unprotected_total": None,
            "shadow_milter": None,
            "unknown": error,
        }
    replica = state.get("replica") or {}
    # The peer's shadow copies held here, and this node's mail accepted without one.
    shadow = state.get("shadow") or {}
    return {
        "messages": sum(state["queue"].values()),
        # Waiting for a retry now: what a deferral that the peer since delivered is not.
        "deferred": state["queue"].get("deferred"),
        "postfix_running": state["postfix_running"],
        "replica_files": replica.get("files"),
        "replica_bytes": replica.get("bytes"),
        "shadow_stored": shadow.get("stored"),
        "shadow_unprotected_total": shadow.get("unprotected_total"),
        "shadow_milter": shadow.get("milter"),
    }


def _agent_error(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return Message(
            "the agent did not answer within {seconds:g} s (busy with a queue sync, an import "
            "or a switchover)",
            seconds=AGENT_TIMEOUT,
        )
    return message_of(exc)


def _run(row: dict[str, Any] | None, now: dt.datetime) -> Status | None:
    if row is None:
        return None
    ended = row["started_at"] + dt.timedelta(seconds=row["duration_seconds"])
    return {
        "started_at": row["started_at"].isoformat(),
        "ended_at": ended.isoformat(),
        "age_seconds": (now - row["started_at"]).total_seconds(),
        "outcome": row["outcome"],
        "detail": row["detail"],
        "duration_seconds": row["duration_seconds"],
        "freeze_seconds": row["freeze_seconds"],
        "freeze_mode": row["freeze_mode"],
        "files": row["files"],
        "bytes": row["bytes"],
    }


async def _latest_run(where: Any) -> dict[str, Any] | None:
    return await SyncRun.select().where(where).order_by(SyncRun.id, ascending=False).first()


async def _sync(node_id: str, now: dt.datetime, active: bool) -> Status:
    """The last run and the last successful one. The lag (now minus the end of the last
    successful run) is the active node's: a passive node's runs are from when it was active,
    and its queue is not the one being replicated."""
    last = _run(await _latest_run(SyncRun.node_id == node_id), now)
    last_ok = _run(await _latest_run((SyncRun.node_id == node_id) & (SyncRun.outcome == "ok")), now)
    # Kept by a trigger on sync_runs: the same cost at day 1 and day 1,000.
    counts = await SyncRun.raw(
        "SELECT outcome, runs FROM sync_run_totals WHERE node_id = {}", node_id
    )
    part: Status = {
        "last": last,
        "last_ok": last_ok,
        "runs": {row["outcome"]: row["runs"] for row in counts},
        "lag_seconds": None,
    }
    if not active:
        part["unknown"] = Message("this node does not hold the VIP: its queue is not replicated")
    elif last_ok is None:
        part["unknown"] = Message("no queue sync has succeeded on this node yet")
    else:
        ended = dt.datetime.fromisoformat(last_ok["ended_at"])
        part["lag_seconds"] = max((now - ended).total_seconds(), 0.0)
    return part


async def _traffic(node_id: str) -> Status:
    """What the node's log said so far (traffic_totals, kept by triggers on the log tables):
    messages accepted, mail_logs rows per status (one per recipient and attempt), rejections.
    """
    rows = await SyncRun.raw("SELECT kind, events FROM traffic_totals WHERE node_id = {}", node_id)
    counts = {row["kind"]: row["events"] for row in rows}
    kinds = ("accepted", "sent", "deferred", "bounced", "expired", "rejected")
    return {kind: counts.get(kind, 0) for kind in kinds}


async def _alerts(node_id: str) -> Status:
    """The alerts whose condition holds on this node (app/alerts keeps them), and when the
    alerts job last checked (None: never)."""
    rows = await SyncRun.raw(
        "SELECT key, active, since, text, text_values, checked_at FROM alert_state "
        "WHERE node_id = {} ORDER BY since, key",
        node_id,
    )
    # `text` with %s places and its `values`: the dashboard shows it translated.
    return {
        "active": [
            {
                "key": r["key"],
                "since": r["since"].isoformat(),
                "text": r["text"],
                "values": list(r["text_values"]),
            }
            for r in rows
            if r["active"]
        ],
        "checked_at": max(r["checked_at"] for r in rows).isoformat() if rows else None,
    }


async def _config(settings: Settings) -> Status:
    """The local version this node's Postfix runs and the newest local one; `master_version`
    is the same in the master's numbering, which both nodes share (on the master it is the
    local number; a slave's comes from the version it pulled). `master_applied` is what the
    master runs as far as this node knows, `ready` whether this node runs it, and
    `differ_seconds` how long the nodes have run different versions (None: they do not)."""
    state = await configstate.current(settings)
    own = state.node(settings.node_id)
    latest = (
        await ConfigVersion.select(ConfigVersion.number)
        .order_by(ConfigVersion.number, ascending=False)
        .first()
    )
    part: Status = {
        "applied": own.number if own else None,
        "applied_at": own.since.isoformat() if own else None,
        "latest": latest["number"] if latest else None,
        "master_version": own.master_number if own else None,
        "master_applied": state.master_applied,
        "ready": state.ready,
        "differ_seconds": state.differ_seconds,
        "drift": state.drift,
    }
    if own is None:
        part["unknown"] = Message("no config version is applied on this node yet")
    elif own.master_number is None:
        part["unknown"] = Message("the applied version did not come from the master")
    return part


# -- the peer ---------------------------------------------------------------------------------


async def _peer_get(settings: Settings, path: str, params: dict[str, Any] | None = None) -> Status:
    """{"reachable": True, "body": <the peer's JSON object at `path`>}, or {"reachable": False,
    "error": "unreachable: <why>"} within PEER_TIMEOUT; never raises."""
    try:
        api = PeerApi.from_settings(settings)
    except PeerError as exc:
        return {
            "reachable": False,
            "error": Message("not configured: {error}", error=message_of(exc)),
        }
    try:
        async with (
            asyncio.timeout(PEER_TIMEOUT),
            peer_request(
                api.url, api.token, api.tls, "GET", path, params=params, timeout=PEER_TIMEOUT
            ) as response,
        ):
            if response.status_code != 200:
                raise PeerError(
                    Message("the peer answered HTTP {status}", status=response.status_code)
                )
            body = await json_object(response, MAX_STATUS_BYTES, Message("the peer's answer"))
    except PeerError as exc:
        return {"reachable": False, "error": _unreachable(message_of(exc))}
    except TimeoutError:
        why = Message("no answer within {seconds:g} s", seconds=PEER_TIMEOUT)
        return {"reachable": False, "error": _unreachable(why)}
    if not isinstance(body.get("node_id"), str):
        why = Message("the peer's answer is not a status")
        return {"reachable": False, "error": _unreachable(why)}
    return {"reachable": True, "body": body}


async def peer_status(settings: Settings) -> Status:
    """{"reachable": True, "status": <the peer's node status>}, or {"reachable": False,
    "error": "unreachable: <why>"} within PEER_TIMEOUT; never raises."""
    answer = await _peer_get(settings, STATUS_PATH)
    if answer["reachable"]:
        node = with_messages(answer["body"])
        if problem := _malformed(node):
            return {"reachable": False, "error": _unreachable(problem)}
        return {"reachable": True, "status": node}
    return answer


def _malformed(node: Status) -> str:
    """What is wrong with the parts of the peer's status this node decides from (the reconcile,
    the switchover, the takeover's wait), or "": the peer's answer is untrusted input, and one
    of another shape must not end those halfway with an exception."""
    for part in ("vrrp", "vip", "queue", "config", "sync"):
        if node.get(part) is not None and not isinstance(node[part], dict):
            return f"its status's {part} is not an object"
    vrrp, vip = node.get("vrrp") or {}, node.get("vip") or {}
    if vrrp.get("state") is not None and not isinstance(vrrp["state"], str):
        return "its VRRP state is not a string"
    if vrrp.get("promotion") is not None and not isinstance(vrrp["promotion"], dict):
        return "its promotion is not an object"
    if vip.get("held") is not None and not isinstance(vip["held"], bool):
        return "its VIP's held is not true or false"
    since = vrrp.get("since")
    if since is not None:
        try:
            aware = isinstance(since, str) and dt.datetime.fromisoformat(since).tzinfo is not None
        except ValueError:
            aware = False
        if not aware:
            return "its VRRP state's time is not an ISO time with its zone"
    return ""


def _unreachable(why: str) -> Message:
    return Message("unreachable: {error}", error=why)


# The parts of a status that say why they are unknown, as JSON for the peer: `unknown` in
# English (what it always was, for scripts and older peers) and `unknown_message` as the
# message itself, so that the peer's reasons appear in this user's language too.
_MESSAGE_SUFFIX = "_message"


def as_json(node: Status) -> Status:
    """A node status with its messages as JSON data (app.messages.encoded)."""
    out: Status = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out[key] = as_json(value)
        elif isinstance(value, Message):
            out[key], out[key + _MESSAGE_SUFFIX] = str(value), encoded(value)
        else:
            out[key] = value
    return out


def with_messages(node: Status) -> Status:
    """A status from JSON with its messages as Messages again (the English where a peer sent
    none)."""
    out: Status = {}
    for key, value in node.items():
        if key.endswith(_MESSAGE_SUFFIX) and isinstance(
            node.get(key[: -len(_MESSAGE_SUFFIX)]), str
        ):
            continue
        if isinstance(value, dict):
            out[key] = with_messages(value)
        elif isinstance(value, str) and key + _MESSAGE_SUFFIX in node:
            out[key] = decoded(node[key + _MESSAGE_SUFFIX], value)
        else:
            out[key] = value
    return out


# -- the traffic of both nodes ----------------------------------------------------------------

TRAFFIC_FIGURES = ("accepted", "delivered", "deferred", "bounced", "rejected")


async def node_traffic(
    settings: Settings, agent: AgentClient, retention_days: int, answer: AgentAnswer | None = None
) -> Status:
    """This node's figures for the dashboard's windows (last hour, 24 hours, `retention_days`
    days: reports.kpi_tiles, from log_totals), and its deferred queue now (from `answer`, the
    agent's status when the caller has it: the agent runs one verb at a time, and each status
    runs Postfix's commands and counts the queue). A deferral counted in a window happened;
    whether the mail still waits is the queue's to say (after a failover the peer may have
    delivered it, and this node's reconcile deleted its copy)."""
    windows, queue = await asyncio.gather(reports.kpi_tiles(retention_days), _queue(agent, answer))
    part: Status = {
        "node_id": settings.node_id,
        "at": dt.datetime.now(dt.UTC).isoformat(),
        "retention_days": retention_days,
        "windows": [
            {"period": w["period"], **{key: int(w[key]) for key in TRAFFIC_FIGURES}}
            for w in windows
        ],
        "deferred_now": queue["deferred"],
    }
    if queue["deferred"] is None:
        part["unknown"] = queue.get("unknown") or "the agent did not say"
    return part


async def peer_traffic(settings: Settings, retention_days: int) -> Status:
    """{"reachable": True, "traffic": <the peer's node_traffic for the same windows>}, or
    {"reachable": False, "error": ...} within PEER_TIMEOUT; never raises. The peer's answer is
    untrusted input: a figure that is not a count makes the whole answer unusable."""
    answer = await _peer_get(settings, TRAFFIC_PATH, {"days": retention_days})
    if not answer["reachable"]:
        return answer
    body = answer["body"]
    windows = body.get("windows")
    expected = [period for period, _ in reports.tile_spans(retention_days)]
    if (
        not isinstance(windows, list)
        or [w.get("period") if isinstance(w, dict) else None for w in windows] != expected
        or not all(_count(w.get(key)) for w in windows for key in TRAFFIC_FIGURES)
        or not (body.get("deferred_now") is None or _count(body["deferred_now"]))
    ):
        why = Message("the peer's answer is not its traffic")
        return {"reachable": False, "error": _unreachable(why)}
    return {"reachable": True, "traffic": body}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def traffic_totals(this: Status, peer: Status) -> Status:
    """Both nodes' windows added up, and their deferred queues (None where a node's is
    unknown). `peer` is what peer_traffic answered; unreachable, there is no total."""
    if not peer.get("reachable"):
        return {}
    other = peer["traffic"]
    windows = [
        {"period": mine["period"], **{key: mine[key] + theirs[key] for key in TRAFFIC_FIGURES}}
        for mine, theirs in zip(this["windows"], other["windows"], strict=True)
    ]
    deferred = (
        None
        if this["deferred_now"] is None or other.get("deferred_now") is None
        else this["deferred_now"] + other["deferred_now"]
    )
    return {"windows": windows, "deferred_now": deferred}


# -- both -------------------------------------------------------------------------------------


async def cluster_view(settings: Settings, agent: AgentClient) -> Status:
    """This node's status and the peer's, asked at the same time, and who holds the VIP."""
    own, peer = await asyncio.gather(node_status(settings, agent), peer_status(settings))
    nodes = [own] + ([peer["status"]] if peer["reachable"] else [])
    return {"this": own, "peer": peer, "vip_owners": vip_owners(nodes)}


def vip_owners(nodes: list[Status]) -> list[str]:
    """The nodes that say they hold the VIP: one normally; two under a partition; none while
    it moves (or when no node can tell)."""
    return [
        str(node.get("node_id"))
        for node in nodes
        if isinstance(node.get("vip"), dict) and node["vip"].get("held") is True
    ]
