"""The alerting rules, checked and unit-tested by promtool (series in, alerts out)."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from .conftest import ROOT

RULES = ROOT / "charts" / "lifespan-sidecar" / "files" / "alerts.yaml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yaml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package 'prometheus'; .ci/run installs it)"
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=ROOT)


def test_rules_are_valid() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_is_tested_and_documented() -> None:
    rules = [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]
    tested = RULE_TESTS.read_text()
    for rule in rules:
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no promtool test"
        assert rule["annotations"]["summary"]
        assert len(rule["annotations"]["description"]) > 80
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
