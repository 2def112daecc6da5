"""Retention settings of the tables that grow by themselves: defaults, values, and one clear
error naming the variable for a bad value."""

from __future__ import annotations

import pytest

from app.settings import SettingsError, load_settings

DB = "postgresql://mailrelay@localhost/mailrelay"


def test_each_growing_table_has_a_default_retention() -> None:
    s = load_settings(env={"DATABASE_URL": DB})
    assert s.sync_runs_retention_days == 30
    assert s.vrrp_events_retention_days == 30
    assert s.queue_imports_retention_days == 90
    assert s.audit_retention_days == 400


def test_retention_days_come_from_the_environment() -> None:
    s = load_settings(
        env={
            "DATABASE_URL": DB,
            "SYNC_RUNS_RETENTION_DAYS": "7",
            "VRRP_EVENTS_RETENTION_DAYS": " 60 ",
            "QUEUE_IMPORTS_RETENTION_DAYS": "365",
            "AUDIT_RETENTION_DAYS": "3650",
        }
    )
    assert s.sync_runs_retention_days == 7
    assert s.vrrp_events_retention_days == 60
    assert s.queue_imports_retention_days == 365
    assert s.audit_retention_days == 3650


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("SYNC_RUNS_RETENTION_DAYS", "a month", "must be an integer, got 'a month'"),
        ("SYNC_RUNS_RETENTION_DAYS", "0", "must be between 1 and 3650, got 0"),
        ("VRRP_EVENTS_RETENTION_DAYS", "-5", "must be between 1 and 3650, got -5"),
        ("VRRP_EVENTS_RETENTION_DAYS", "2.5", "must be an integer, got '2.5'"),
        # Shorter than a node's plausible absence would let its stale copies go out again.
        ("QUEUE_IMPORTS_RETENTION_DAYS", "3", "must be between 7 and 3650, got 3"),
        ("AUDIT_RETENTION_DAYS", "10", "must be between 30 and 36500, got 10"),
        ("AUDIT_RETENTION_DAYS", "forever", "must be an integer, got 'forever'"),
    ],
)
def test_a_bad_retention_value_is_one_error_naming_its_variable(
    variable: str, value: str, says: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"DATABASE_URL": DB, variable: value})
    assert str(caught.value) == f"{variable} {says}"
