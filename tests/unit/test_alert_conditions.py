"""The alert conditions as a pure function of a node's status: what holds, what clears, and
what cannot be judged (then no finding, so the alert keeps its state)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import Any

from app.alerts.conditions import TITLES, Facts, Finding, evaluate
from app.settings import AlertSettings
from app.web.i18n import GERMAN

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
LIMITS = AlertSettings()

CALM: dict[str, Any] = {
    "this": {
        "node_id": "a",
        "vrrp": {"state": "MASTER"},
        "vip": {"held": True},
        "queue": {"messages": 3, "shadow_unprotected_total": 5, "shadow_milter": "answering"},
        "sync": {"lag_seconds": 4.0, "last": {"detail": ""}},
        "config": {"drift": False, "differ_seconds": None},
        "host": {
            "tls_cert_not_after": (NOW + dt.timedelta(days=90)).isoformat(),
            "spool_used_percent": 40.0,
        },
    },
    "peer": {"reachable": True, "status": {"node_id": "b", "vrrp": {"state": "BACKUP"}}},
    "vip_owners": ["a"],
}


def judge(view: dict[str, Any] | None = None, **facts: Any) -> dict[str, Finding]:
    given = {
        "sync_outcomes": ["ok"],
        "oldest_queued_seconds": 10.0,
        "backup_age_hours": 5.0,
        "ingest_behind": (0, 0.5),
    }
    given |= facts
    found = evaluate(Facts(view=view or CALM, now=NOW, **given), LIMITS)
    return {f.key: f for f in found}


def changed(**parts: Any) -> dict[str, Any]:
    view = copy.deepcopy(CALM)
    for path, value in parts.items():
        *keys, last = path.split("__")
        target = view
        for key in keys:
            target = target[key]
        target[last] = value
    return view


def test_a_calm_node_has_every_condition_judged_and_none_holds():
    found = judge(previous={"unprotected_mail": 5.0})
    assert set(found) == set(TITLES)
    assert [key for key, f in found.items() if f.active] == []


def test_the_sync_alert_wants_the_configured_number_of_failures_in_a_row():
    assert judge(sync_outcomes=["failed", "failed", "ok"])["sync_failing"].active is False
    failing = judge(sync_outcomes=["failed", "conflict", "failed"])["sync_failing"]
    assert failing.active and failing.values == ("3", "failed")
    assert judge(sync_outcomes=["failed", "failed"])["sync_failing"].active is False


def test_a_passive_node_clears_its_sync_and_lag_alerts():
    view = changed(this__vip={"held": False}, this__sync={"lag_seconds": None})
    found = judge(view, sync_outcomes=["failed"] * 3)
    assert not found["sync_failing"].active and not found["replication_lag"].active


def test_what_cannot_be_judged_gives_no_finding():
    agent_down = changed(
        this__queue={"messages": None, "shadow_unprotected_total": None, "shadow_milter": None}
    )
    found = judge(agent_down, oldest_queued_seconds=None)
    assert {"queue_size", "queue_age", "unprotected_mail"}.isdisjoint(found)
    unconfigured = changed(peer={"reachable": False, "error": "not configured: PEER_API_URL"})
    found = judge(unconfigured)
    assert "peer_unreachable" not in found and "both_master" not in found
    gone = changed(peer={"reachable": False, "error": "unreachable: no answer within 3 s"})
    assert judge(gone)["peer_unreachable"].active
    assert "both_master" not in judge(gone)  # the peer-unreachable alert says what is known


def test_mail_without_a_copy_counts_from_the_last_check():
    assert judge()["unprotected_mail"].active is False  # no earlier figure yet
    assert judge()["unprotected_mail"].figure == 5.0
    grew = judge(previous={"unprotected_mail": 2.0})["unprotected_mail"]
    assert grew.active and grew.values == ("3",)
    # The milter's counter file started again: nothing is known to be unprotected.
    assert judge(previous={"unprotected_mail": 9.0})["unprotected_mail"].active is False
    silent = changed(this__queue__shadow_milter="not answering")
    assert judge(silent, previous={"unprotected_mail": 5.0})["unprotected_mail"].active


def test_both_nodes_master_by_their_states_or_by_two_vip_owners():
    assert judge(changed(peer__status__vrrp={"state": "MASTER"}))["both_master"].active
    assert judge(changed(vip_owners=["a", "b"]))["both_master"].values == ("a, b",)


def test_thresholds_of_queue_age_certificate_spool_drift_and_held_mail():
    assert judge(oldest_queued_seconds=3601.0)["queue_age"].active
    assert (
        judge(changed(this__queue__messages=0), oldest_queued_seconds=None)["queue_age"].active
        is False
    )
    soon = (NOW + dt.timedelta(days=13)).isoformat()
    assert judge(changed(this__host__tls_cert_not_after=soon))["tls_cert_expiring"].active
    assert judge(changed(this__host__spool_used_percent=90.0))["spool_full"].active
    drift = changed(this__config={"drift": True, "differ_seconds": 90.0})
    assert judge(drift)["config_drift"].values == ("1.5",)
    assert judge(held=2)["mail_held"].active


def test_a_master_whose_takeover_failed_says_why_and_how_to_try_again():
    failed = changed(this__vrrp__promotion={"error": "importing the replica failed: x"})
    found = judge(failed)["takeover_failed"]
    assert found.active and found.values == ("importing the replica failed: x",)
    assert "restart mailrelay-vrrp-events" in found.summary
    running = changed(this__vrrp__promotion=None)
    assert judge(running)["takeover_failed"].active is False  # not failed (yet)
    backup = changed(this__vrrp={"state": "BACKUP", "promotion": {"error": "x"}})
    assert judge(backup)["takeover_failed"].active is False
    unknown = changed(this__vrrp={"state": None, "unknown": "no state yet"})
    assert "takeover_failed" not in judge(unknown)


def test_a_node_without_a_backup_for_a_day_and_a_half_is_told():
    stale = judge(backup_age_hours=36.5)["backup_stale"]
    assert stale.active and stale.values == ("36",)
    assert "journalctl -u mailrelay-backup" in stale.summary
    assert judge(backup_age_hours=35.0)["backup_stale"].active is False
    # BACKUP_DIR unreadable, or ALERT_BACKUP_HOURS=0 (backups made otherwise): not judged.
    assert "backup_stale" not in judge(backup_age_hours=None)
    off = evaluate(
        Facts(view=CALM, now=NOW, backup_age_hours=99.0),
        dataclasses.replace(LIMITS, backup_hours=0),
    )
    assert "backup_stale" not in {f.key for f in off}


def test_every_text_a_condition_can_say_is_translated():
    worst = changed(
        this__vip={"held": None},
        this__sync={"lag_seconds": 999.0, "last": {"detail": "x"}},
        this__queue={"messages": 5000, "shadow_unprotected_total": 9, "shadow_milter": "answering"},
        this__config={"drift": True, "differ_seconds": 60.0},
        this__host={"tls_cert_not_after": NOW.isoformat(), "spool_used_percent": 99.0},
        peer={"reachable": False, "error": "unreachable: x"},
    )
    texts = {
        f.text
        for f in judge(
            worst,
            sync_outcomes=["failed"] * 3,
            held=1,
            oldest_queued_seconds=9e9,
            previous={"unprotected_mail": 1.0},
            backup_age_hours=40.0,
            ingest_behind=(1, 99.0),
        ).values()
    }
    texts |= {f.text for f in judge(previous={"unprotected_mail": 5.0}).values()}
    texts |= {f.text for f in judge(changed(this__vip={"held": False})).values()}
    texts |= {judge(changed(this__queue__shadow_milter="not answering"))["unprotected_mail"].text}
    texts |= {judge(changed(vip_owners=["a", "b"]))["both_master"].text}
    texts |= {judge(changed(this__queue__messages=0))["queue_age"].text}
    texts |= {judge(changed(this__vrrp__promotion={"error": "x"}))["takeover_failed"].text}
    assert len(texts) == 26  # every text in app/alerts/conditions.py
    assert sorted(t for t in texts | set(TITLES.values()) if t not in GERMAN) == []


def test_a_mail_log_not_read_for_longer_than_the_limit_is_an_alert():
    stalled = judge(ingest_behind=(700, 11.0))["ingest_stalled"]
    assert stalled.active and stalled.values == ("700", "11")
    # A quiet relay writes nothing: an old cursor with nothing unread is no stop.
    assert judge(ingest_behind=(0, 600.0))["ingest_stalled"].active is False
    # Lines read a minute ago: ingestion is behind, not stopped.
    assert judge(ingest_behind=(50_000, 1.0))["ingest_stalled"].active is False
    assert "ingest_stalled" not in judge(ingest_behind=None)
