"""The alert e-mail is written in ALERT_LANGUAGE: English by default, German when asked."""

from __future__ import annotations

import datetime as dt

import pytest

from app.alerts.notify import AlertNotice
from app.settings import SettingsError, load_settings

SINCE = dt.datetime(2026, 12, 5, 9, 30, 5, tzinfo=dt.UTC)
NOTICE = AlertNotice(
    "a", "relay-a", "queue_size", True, SINCE, "%s messages in the queue (limit %s)",
    ("5000", "1000"), SINCE,
)  # fmt: skip


def test_the_alert_mail_is_english_by_default():
    assert NOTICE.subject() == "[mailrelay a] ALERT: Queue size"
    body = NOTICE.body()
    assert body.startswith("Queue size on node a (relay-a): holds since 2026-12-05 09:30:05 UTC.")
    assert "5000 messages in the queue (limit 1000)" in body


def test_the_alert_mail_is_german_when_asked():
    assert NOTICE.subject("de") == "[mailrelay a] ALARM: Warteschlangengröße"
    body = NOTICE.body("de")
    assert body.startswith(
        "Warteschlangengröße auf Knoten a (relay-a): besteht seit 05.12.2026 09:30:05 UTC."
    )
    assert "5000 Nachrichten in der Warteschlange (Grenze 1000)" in body
    assert "Dashboard des Knotens" in body
    cleared = AlertNotice("a", "relay-a", "queue_size", False, SINCE, "ok", (), SINCE)
    assert cleared.subject("de") == "[mailrelay a] behoben: Warteschlangengröße"


def test_alert_language_is_checked(monkeypatch):
    monkeypatch.setenv("ALERT_LANGUAGE", "fr")
    with pytest.raises(SettingsError, match="ALERT_LANGUAGE"):
        load_settings()
