"""SESSION_MAX_HOURS: a session's absolute lifetime, validated with the idle timeout."""

from __future__ import annotations

import pytest

from app.settings import SettingsError, load_settings

DB = "postgresql://mailrelay@localhost/mailrelay"


def test_a_session_lives_at_most_12_hours_by_default() -> None:
    assert load_settings(env={"DATABASE_URL": DB}).session_max_hours == 12


def test_the_lifetime_is_read_from_session_max_hours() -> None:
    s = load_settings(env={"DATABASE_URL": DB, "SESSION_MAX_HOURS": " 2 "})
    assert s.session_max_hours == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("twelve", "SESSION_MAX_HOURS must be an integer"),
        ("0", "SESSION_MAX_HOURS must be between 1 and 720"),
        ("721", "SESSION_MAX_HOURS must be between 1 and 720"),
    ],
)
def test_a_bad_lifetime_is_an_error_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env={"DATABASE_URL": DB, "SESSION_MAX_HOURS": value})


def test_a_lifetime_shorter_than_the_idle_timeout_is_an_error() -> None:
    env = {"DATABASE_URL": DB, "SESSION_MAX_HOURS": "1", "SESSION_IDLE_MINUTES": "90"}
    with pytest.raises(SettingsError, match=r"SESSION_MAX_HOURS \(1 h\).*SESSION_IDLE_MINUTES"):
        load_settings(env=env)
