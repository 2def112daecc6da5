"""Which alert conditions hold on this node, judged from what it knows right now.

A pure function of the facts (the cluster view from app/cluster/status.py plus what only the
alerts job looks up) and the thresholds: no I/O and no clock, so that each condition is easy to
test. A condition that cannot be judged (the agent down, the peer not configured) gives no
finding: its alert keeps the state it had, rather than clearing for lack of knowledge.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from app.cluster import health
from app.settings import AlertSettings

Status = dict[str, Any]

# The alerts, and their titles (English; app/web/i18n.py has them in German). The keys are
# what the state table, the webhook and /metrics' mailrelay_alert_active{alert=...} use.
TITLES = {
    "sync_failing": "Queue sync failing",
    "replication_lag": "Replication lag",
    "queue_size": "Queue size",
    "queue_age": "Old mail in the queue",
    "peer_unreachable": "Peer unreachable",
    "unprotected_mail": "Mail without a shadow copy",
    "both_master": "Both nodes MASTER",
    "mail_held": "Mail held for release",
    "takeover_failed": "Takeover of the peer's queue failed",
    "tls_cert_expiring": "Certificate expiring",
    "spool_full": "Spool disk nearly full",
    "config_drift": "Config versions differ",
    "backup_stale": "No recent backup",
    "ingest_stalled": "Mail log not read",
}


@dataclass(frozen=True)
class Finding:
    key: str
    active: bool
    # What a person reads: English with %s places (the i18n key) and their values.
    text: str
    values: tuple[str, ...] = ()
    # Remembered for the next run (the unprotected-mail counter).
    figure: float | None = None

    @property
    def summary(self) -> str:
        return self.text % self.values if self.values else self.text


@dataclass(frozen=True)
class Facts:
    view: Status  # status.cluster_view()
    now: dt.datetime
    # This node's latest queue-sync outcomes, newest first (at most ALERT_SYNC_FAILURES).
    sync_outcomes: list[str] = field(default_factory=list)
    held: int = 0  # queue IDs held for release (app/cluster/reconcile.py: pending)
    oldest_queued_seconds: float | None = None  # None: not known (or the queue is empty)
    previous: dict[str, float | None] = field(default_factory=dict)  # last run's figures
    # Hours since this node's newest backup (since BACKUP_DIR was made, while it has none);
    # None: BACKUP_DIR cannot be read.
    backup_age_hours: float | None = None
    # The mail log's bytes that ingestion has not read, and the minutes since it last read any;
    # None: not known (no cursor yet, the log cannot be looked at).
    ingest_behind: tuple[int, float] | None = None


def _get(status: Any, *path: str) -> Any:
    for key in path:
        status = status.get(key) if isinstance(status, dict) else None
    return status


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def evaluate(facts: Facts, limits: AlertSettings) -> list[Finding]:
    this = facts.view["this"]
    judged = [
        _sync_failing(facts, this, limits),
        _replication_lag(this, limits),
        _queue_size(this, limits),
        _queue_age(facts, limits),
        _peer_unreachable(facts.view),
        _unprotected(facts, this),
        _both_master(facts.view),
        _held(facts),
        _takeover_failed(this),
        _certificate(facts, this, limits),
        _spool(this, limits),
        _config_drift(this),
        _backup(facts, limits),
        _ingest(facts, limits),
    ]
    return [finding for finding in judged if finding is not None]


def _backup(facts: Facts, limits: AlertSettings) -> Finding | None:
    age = facts.backup_age_hours
    if not limits.backup_hours or age is None:
        return None
    if age > limits.backup_hours:
        # Rotation runs only after a backup that worked: the old files stay, and the newest
        # quietly ages until the day a restore needs it.
        return Finding(
            "backup_stale",
            True,
            "this node's newest backup is %s hours old: `journalctl -u mailrelay-backup` says "
            "why the nightly one failed",
            (f"{age:.0f}",),
        )
    return Finding("backup_stale", False, "a backup of the last %s hours", (f"{age:.0f}",))


def _ingest(facts: Facts, limits: AlertSettings) -> Finding | None:
    if not limits.ingest_minutes or facts.ingest_behind is None:
        return None
    unread, minutes = facts.ingest_behind
    if unread and minutes > limits.ingest_minutes:
        # Message tracking, the dashboard's figures and the rejection log all come from it.
        return Finding(
            "ingest_stalled",
            True,
            "%s bytes of the mail log have waited %s minutes for ingestion: "
            "`journalctl -u mailrelay-ingest-logs` says why",
            (str(unread), f"{minutes:.0f}"),
        )
    return Finding("ingest_stalled", False, "ingestion keeps up with the mail log")


def _sync_failing(facts: Facts, this: Status, limits: AlertSettings) -> Finding | None:
    if _get(this, "vip", "held") is False:
        # A passive node copies nothing: whatever its last runs did is over.
        return Finding("sync_failing", False, "this node does not hold the VIP")
    outcomes = facts.sync_outcomes[: limits.sync_failures]
    failing = len(outcomes) == limits.sync_failures and all(
        o in ("failed", "conflict") for o in outcomes
    )
    if failing:
        detail = _get(this, "sync", "last", "detail") or ""
        return Finding(
            "sync_failing",
            True,
            "the last %s queue-sync runs failed; the last one: %s",
            (str(len(outcomes)), detail or outcomes[0]),
        )
    return Finding("sync_failing", False, "queue sync works")


def _replication_lag(this: Status, limits: AlertSettings) -> Finding | None:
    lag = _get(this, "sync", "lag_seconds")
    if _get(this, "vip", "held") is False:
        return Finding("replication_lag", False, "this node does not hold the VIP")
    if not isinstance(lag, int | float):
        return None
    if lag > limits.replication_lag_seconds:
        return Finding(
            "replication_lag",
            True,
            "the last successful queue sync ended %s minutes ago (limit %s)",
            (_minutes(lag), _minutes(limits.replication_lag_seconds)),
        )
    return Finding("replication_lag", False, "the replica is current")


def _queue_size(this: Status, limits: AlertSettings) -> Finding | None:
    messages = _get(this, "queue", "messages")
    if not isinstance(messages, int):
        return None
    return Finding(
        "queue_size",
        messages > limits.queue_messages,
        "%s messages in the queue (limit %s)",
        (str(messages), str(limits.queue_messages)),
    )


def _queue_age(facts: Facts, limits: AlertSettings) -> Finding | None:
    age = facts.oldest_queued_seconds
    if _get(facts.view, "this", "queue", "messages") == 0:
        return Finding("queue_age", False, "the queue is empty")
    if age is None:
        return None
    return Finding(
        "queue_age",
        age > limits.queue_age_seconds,
        "the oldest message has been queued for %s minutes (limit %s)",
        (_minutes(age), _minutes(limits.queue_age_seconds)),
    )


def _peer_unreachable(view: Status) -> Finding | None:
    peer = view.get("peer") or {}
    if peer.get("reachable"):
        return Finding("peer_unreachable", False, "the peer answers")
    error = str(peer.get("error") or "")
    if error.startswith("not configured"):
        return None
    return Finding("peer_unreachable", True, "the peer's status API: %s", (error,))


def _unprotected(facts: Facts, this: Status) -> Finding | None:
    total = _get(this, "queue", "shadow_unprotected_total")
    milter = _get(this, "queue", "shadow_milter")
    before = facts.previous.get("unprotected_mail")
    figure = float(total) if isinstance(total, int | float) else before
    if milter == "not answering":
        return Finding(
            "unprotected_mail",
            True,
            "the shadow milter does not answer: Postfix accepts mail without a copy on the peer",
            figure=figure,
        )
    if not isinstance(total, int | float):
        return None
    if before is not None and total > before:
        return Finding(
            "unprotected_mail",
            True,
            "%s messages were accepted without a shadow copy on the peer since the last check",
            (str(int(total - before)),),
            figure=figure,
        )
    return Finding(
        "unprotected_mail", False, "every message since the last check has a copy", figure=figure
    )


def _both_master(view: Status) -> Finding | None:
    owners = view.get("vip_owners") or []
    this_state = _get(view, "this", "vrrp", "state")
    peer = view.get("peer") or {}
    if not peer.get("reachable"):
        return None  # the peer-unreachable alert says what is known
    peer_state = _get(peer, "status", "vrrp", "state")
    if len(owners) > 1 or (this_state == "MASTER" and peer_state == "MASTER"):
        return Finding(
            "both_master",
            True,
            "both nodes are MASTER (VIP held by: %s): a partition between them?",
            (", ".join(owners) or "-",),
        )
    return Finding("both_master", False, "one MASTER")


def _held(facts: Facts) -> Finding | None:
    return Finding(
        "mail_held",
        facts.held > 0,
        "%s messages are held: this node came back and could not ask its peer which it "
        "delivered; release them on the dashboard",
        (str(facts.held),),
    )


def _takeover_failed(this: Status) -> Finding | None:
    vrrp = this.get("vrrp") or {}
    if vrrp.get("state") is None:
        return None
    error = _get(vrrp, "promotion", "error")
    if vrrp.get("state") == "MASTER" and error:
        return Finding(
            "takeover_failed",
            True,
            "this node is MASTER but did not take over the peer's queue (%s); that mail waits in "
            "the replica: fix the cause, then restart mailrelay-vrrp-events here to try again",
            (str(error),),
        )
    return Finding("takeover_failed", False, "no takeover of the peer's queue failed")


def _certificate(facts: Facts, this: Status, limits: AlertSettings) -> Finding | None:
    not_after = _get(this, "host", "tls_cert_not_after")
    days = health.days_left(not_after, facts.now)
    if days is None:
        return None
    return Finding(
        "tls_cert_expiring",
        days < limits.cert_days,
        "the node's HTTPS certificate expires on %s (in %s days)",
        (str(not_after)[:10], f"{days:.1f}"),
    )


def _spool(this: Status, limits: AlertSettings) -> Finding | None:
    used = _get(this, "host", "spool_used_percent")
    if not isinstance(used, int | float):
        return None
    return Finding(
        "spool_full",
        used >= limits.spool_percent,
        "the spool's file system is %s%% full (limit %s%%)",
        (f"{used:.1f}", f"{limits.spool_percent:g}"),
    )


def _config_drift(this: Status) -> Finding | None:
    config = this.get("config") or {}
    if config.get("drift"):
        return Finding(
            "config_drift",
            True,
            "the nodes have run different config versions for %s minutes",
            (_minutes(float(config.get("differ_seconds") or 0.0)),),
        )
    return Finding("config_drift", False, "the nodes run the same config version")
