"""Every systemd unit we ship passes `systemd-analyze verify`.

The only complaint allowed is about the ExecStart binary: /opt/mailrelay/venv/bin/mailrelay
exists on an installed node, not on the machine that runs the tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parents[2] / "units").iterdir())
INSTALLED_ONLY = re.compile(
    r"^\S+: Command /opt/mailrelay/\S+ is not executable: No such file or directory$"
)

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd)",
)


def test_there_are_units():
    names = {unit.name for unit in UNITS}
    assert {
        "mailrelay-ingest-logs.service",
        "mailrelay-ingest-logs.timer",
        "mailrelay-retention.service",
        "mailrelay-retention.timer",
    } <= names


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_systemd_accepts_the_unit(unit: Path):
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    messages = [
        message
        for message in (result.stdout + result.stderr).splitlines()
        if message.strip() and not INSTALLED_ONLY.match(message.strip())
    ]
    assert messages == [], "\n".join(messages)
