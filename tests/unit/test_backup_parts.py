"""The parts of app/backup.py that need no database: the password kept off pg_dump's command
line, the BACKUP_* settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.backup import libpq_target
from app.settings import SettingsError, load_settings


def test_a_password_in_the_url_goes_to_the_environment_not_the_command_line():
    target, env = libpq_target("postgresql://mailrelay:s%40cr%3At@db.example:5433/mailrelay")
    assert target == "postgresql://mailrelay@db.example:5433/mailrelay"
    assert env == {"PGPASSWORD": "s@cr:t"}


def test_a_password_parameter_goes_to_the_environment_and_the_other_parameters_stay():
    target, env = libpq_target(
        "postgresql:///mailrelay?host=/var/run/postgresql&password=p%26w&sslmode=disable"
    )
    assert "password" not in target and "p%26w" not in target
    assert target.startswith("postgresql:///mailrelay?host=")
    assert "sslmode=disable" in target
    assert env == {"PGPASSWORD": "p&w"}


def test_a_url_without_a_password_is_passed_as_it_is():
    url = "postgresql:///mailrelay?host=/var/run/postgresql"
    assert libpq_target(url) == (url, {})
    assert libpq_target("postgresql://u@[::1]:5432/db") == ("postgresql://u@[::1]:5432/db", {})


def test_backup_settings_have_defaults_and_name_a_bad_value():
    base = {"DATABASE_URL": "postgresql://mailrelay@localhost/mailrelay"}
    settings = load_settings(env=base)
    assert settings.backup_dir == Path("/var/backups/mailrelay")
    assert settings.backup_keep == 14
    settings = load_settings(env={**base, "BACKUP_DIR": "/srv/b", "BACKUP_KEEP": "3"})
    assert (settings.backup_dir, settings.backup_keep) == (Path("/srv/b"), 3)
    for bad in ("0", "many"):
        with pytest.raises(SettingsError, match="BACKUP_KEEP"):
            load_settings(env={**base, "BACKUP_KEEP": bad})
