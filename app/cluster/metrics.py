"""The cluster's figures in Prometheus' text exposition format (version 0.0.4), for /metrics.

The same figures as the cluster panel, for this node and the peer, each sample labelled with
the node it describes (node="a"). A figure that is not known (the agent down, no sync yet, the
peer unreachable) has no sample: Prometheus reads an absent series as "unknown", where a 0 would
be a false value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.cluster.status import Status

# Litestar adds "; charset=utf-8" to a text/ media type.
CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # gauge | counter
    help: str
    # The node's samples: (extra labels, value) pairs from its status; a None value is skipped.
    samples: Callable[[Status], list[tuple[dict[str, str], Any]]]


def _get(status: Status, *path: str) -> Any:
    value: Any = status
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _one(*path: str) -> Callable[[Status], list[tuple[dict[str, str], Any]]]:
    return lambda status: [({}, _get(status, *path))]


def _vrrp_master(status: Status) -> list[tuple[dict[str, str], Any]]:
    state = _get(status, "vrrp", "state")
    return [({}, None if state is None else state == "MASTER")]


def _milter_up(status: Status) -> list[tuple[dict[str, str], Any]]:
    state = _get(status, "queue", "shadow_milter")
    if state not in ("answering", "not answering"):
        return []  # off, or the agent did not say
    return [({}, state == "answering")]


def _runs(status: Status) -> list[tuple[dict[str, str], Any]]:
    runs = _get(status, "sync", "runs")
    if not isinstance(runs, dict):
        return []
    return [({"outcome": str(outcome)}, count) for outcome, count in sorted(runs.items())]


def _timestamp(*path: str) -> Callable[[Status], list[tuple[dict[str, str], Any]]]:
    def samples(status: Status) -> list[tuple[dict[str, str], Any]]:
        try:
            return [({}, dt.datetime.fromisoformat(_get(status, *path)).timestamp())]
        except (TypeError, ValueError):
            return []

    return samples


def _build_info(status: Status) -> list[tuple[dict[str, str], Any]]:
    version = _get(status, "version")
    return [({"version": version}, 1)] if isinstance(version, str) else []


# mail_logs statuses and how the counter calls them.
_DELIVERY_STATUSES = {
    "sent": "delivered",
    "deferred": "deferred",
    "bounced": "bounced",
    "expired": "expired",
}


def _deliveries(status: Status) -> list[tuple[dict[str, str], Any]]:
    return [
        ({"status": label}, _get(status, "traffic", kind))
        for kind, label in _DELIVERY_STATUSES.items()
    ]


def _spool_used(status: Status) -> list[tuple[dict[str, str], Any]]:
    percent = _get(status, "host", "spool_used_percent")
    return [({}, percent / 100.0 if isinstance(percent, int | float) else None)]


def _alerts_active(status: Status) -> list[tuple[dict[str, str], Any]]:
    active = _get(status, "alerts", "active")
    if not isinstance(active, list):
        return []
    return [({"alert": str(a.get("key"))}, 1) for a in active if isinstance(a, dict)]


FAMILIES = (
    Family(
        "mailrelay_build_info",
        "gauge",
        "Always 1; the version label says which mailrelay-ha the node runs.",
        _build_info,
    ),
    Family(
        "mailrelay_vrrp_master",
        "gauge",
        "1 if keepalived last reported the MASTER state on the node, 0 for any other state.",
        _vrrp_master,
    ),
    Family(
        "mailrelay_vip_held",
        "gauge",
        "1 if the VIP is configured on the node right now.",
        _one("vip", "held"),
    ),
    Family(
        "mailrelay_queue_messages",
        "gauge",
        "Messages in the node's Postfix queue.",
        _one("queue", "messages"),
    ),
    Family(
        "mailrelay_replica_files",
        "gauge",
        "Message files of the peer's queue in the node's replica directory.",
        _one("queue", "replica_files"),
    ),
    Family(
        "mailrelay_replica_bytes",
        "gauge",
        "Bytes of those message files.",
        _one("queue", "replica_bytes"),
    ),
    Family(
        "mailrelay_shadow_stored",
        "gauge",
        "The peer's shadow copies held on the node (mail the peer accepted since its last sync).",
        _one("queue", "shadow_stored"),
    ),
    Family(
        "mailrelay_shadow_unprotected_total",
        "counter",
        "Messages the node accepted without a shadow copy on the peer (SHADOW_MODE=prefer).",
        _one("queue", "shadow_unprotected_total"),
    ),
    Family(
        "mailrelay_shadow_milter_up",
        "gauge",
        "1 if the shadow milter Postfix uses answers on its socket, 0 if not (Postfix then "
        "accepts mail without a copy, uncounted, in SHADOW_MODE=prefer); absent when off.",
        _milter_up,
    ),
    Family(
        "mailrelay_sync_last_success_timestamp_seconds",
        "gauge",
        "When the node's last successful queue sync ended (Unix time).",
        _timestamp("sync", "last_ok", "ended_at"),
    ),
    Family(
        "mailrelay_sync_last_duration_seconds",
        "gauge",
        "How long the node's last queue-sync run took.",
        _one("sync", "last", "duration_seconds"),
    ),
    Family(
        "mailrelay_sync_last_freeze_seconds",
        "gauge",
        "How long Postfix was frozen during the node's last queue-sync run.",
        _one("sync", "last", "freeze_seconds"),
    ),
    Family(
        "mailrelay_sync_runs_total",
        "counter",
        "Queue-sync runs recorded on the node (sync_runs), by outcome.",
        _runs,
    ),
    Family(
        "mailrelay_replication_lag_seconds",
        "gauge",
        "Seconds since the end of the last successful queue sync of the node holding the VIP.",
        _one("sync", "lag_seconds"),
    ),
    Family(
        "mailrelay_config_version",
        "gauge",
        "The config version the node's Postfix runs, in the master's numbering.",
        _one("config", "master_version"),
    ),
    Family(
        "mailrelay_config_ready",
        "gauge",
        "1 if the node runs the config version the master applied (as far as the node knows).",
        _one("config", "ready"),
    ),
    Family(
        "mailrelay_config_differ_seconds",
        "gauge",
        "How long the nodes have run different config versions, as the node sees it; no sample "
        "while they run the same.",
        _one("config", "differ_seconds"),
    ),
    Family(
        "mailrelay_messages_accepted_total",
        "counter",
        "Messages the node's Postfix took in (each queue ID once, as its log shows them).",
        _one("traffic", "accepted"),
    ),
    Family(
        "mailrelay_deliveries_total",
        "counter",
        "Delivery outcomes in the node's log, one per recipient and attempt, by status "
        "(delivered, deferred, bounced, expired).",
        _deliveries,
    ),
    Family(
        "mailrelay_rejections_total",
        "counter",
        "SMTP transactions the node's Postfix refused.",
        _one("traffic", "rejected"),
    ),
    Family(
        "mailrelay_tls_cert_expiry_timestamp_seconds",
        "gauge",
        "When the certificate of the node's HTTPS API expires (Unix time).",
        _timestamp("host", "tls_cert_not_after"),
    ),
    Family(
        "mailrelay_spool_used_ratio",
        "gauge",
        "How full the file system of the node's Postfix spool is (0-1, as df shows it).",
        _spool_used,
    ),
    Family(
        "mailrelay_alert_active",
        "gauge",
        "1 for each alert whose condition holds on the node (the mailrelay-alerts job's last "
        "check); no sample for the others.",
        _alerts_active,
    ),
    Family(
        "mailrelay_alerts_last_check_timestamp_seconds",
        "gauge",
        "When the node's alerts job last checked its conditions (Unix time).",
        _timestamp("alerts", "checked_at"),
    ),
)
PEER_UP = Family(
    "mailrelay_peer_up",
    "gauge",
    "1 if the peer's status API answered this node.",
    lambda view: [({}, _get(view, "peer", "reachable"))],
)


def _number(value: Any) -> str | None:
    """The sample value, or None when it is not a number (unknown, or a peer's bad answer)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items()) + "}"


def _family(family: Family, sources: list[tuple[dict[str, str], Status]]) -> list[str]:
    lines = [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
    for labels, status in sources:
        for extra, value in family.samples(status):
            number = _number(value)
            if number is not None:
                lines.append(f"{family.name}{_labels(labels | extra)} {number}")
    return lines


def render(view: Status) -> str:
    """The exposition of a status.cluster_view()."""
    nodes = [view["this"]] + ([view["peer"]["status"]] if view["peer"]["reachable"] else [])
    sources = [({"node": str(node.get("node_id"))}, node) for node in nodes]
    lines: list[str] = []
    for family in FAMILIES:
        lines += _family(family, sources)
    lines += _family(PEER_UP, [({}, view)])
    return "\n".join(lines) + "\n"
