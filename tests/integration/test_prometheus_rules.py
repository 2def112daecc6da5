"""The Prometheus rules we ship (scripts/prometheus/mailrelay-rules.yml) are valid, do what their
unit tests say (`promtool test rules`), use only metrics /metrics really exports, and cover every
condition of the alerts job; the real /metrics passes `promtool check metrics`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.alerts import conditions
from app.auth import tokens
from app.cluster import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "scripts" / "prometheus" / "mailrelay-rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "mailrelay-rules.test.yml"
EXPORTED = {family.name for family in metrics.FAMILIES} | {metrics.PEER_UP.name}

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus)",
)


def promtool(*args: str, cwd: Path = ROOT, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["promtool", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules():
    assert "SUCCESS: 15 rules found" in promtool("check", "rules", str(RULES))


def test_the_rules_pass_their_unit_tests():
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_the_rules_and_their_tests_use_only_metrics_that_metrics_exports():
    used = {name for rule in _rules() for name in re.findall(r"mailrelay_[a-z_]+", rule["expr"])}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fed = {series["series"].split("{")[0] for test in tests for series in test["input_series"]}
    assert used and used <= EXPORTED, used - EXPORTED
    assert fed <= EXPORTED, fed - EXPORTED


def test_every_condition_of_the_alerts_job_has_a_rule():
    named = {rule["labels"].get("mailrelay_alert") for rule in _rules()} - {None}
    assert named == set(conditions.TITLES)
    asked = {key for rule in _rules() for key in re.findall(r'alert="([a-z_]+)"', rule["expr"])}
    assert asked <= set(conditions.TITLES)


async def test_the_real_metrics_pass_promtool_check_metrics(client):
    headers = {"authorization": "Bearer " + await tokens.create("prometheus", "read", "test")}
    exposition = (await client.get("/metrics", headers=headers)).text
    assert "mailrelay_build_info{" in exposition
    promtool("check", "metrics", stdin=exposition)
