"""The chart's PrometheusRule and Grafana dashboard ConfigMap, rendered by the Helm engine."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from .conftest import CHART_DIR, SERVICE_MONITOR_API

ALERTS = CHART_DIR / "files" / "alerts.yaml"
DASHBOARD = CHART_DIR / "files" / "dashboard.json"


def test_prometheus_rule_carries_the_tested_rules(chart_helm, validate_k8s, tmp_path: Path):
    values = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}}
    without_api = chart_helm.render(values)
    assert "PrometheusRule" not in without_api.kinds()
    release = chart_helm.render(values, api_versions=(SERVICE_MONITOR_API,))
    rule = release.one("PrometheusRule")
    validate_k8s(rule)
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    # the rendered rules are valid for Prometheus itself, not only for the schema
    rendered = tmp_path / "rules.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package 'prometheus')"
    result = subprocess.run([promtool, "check", "rules", str(rendered)], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    disabled = chart_helm.render({}, api_versions=(SERVICE_MONITOR_API,))
    assert "PrometheusRule" not in disabled.kinds()


def test_dashboard_configmap(chart_helm, validate_k8s):
    assert "ConfigMap" in chart_helm.render({}).kinds()  # the sidecar config only
    dashboard_values = {
        "enabled": True,
        "namespace": "monitoring",
        "annotations": {"grafana_folder": "apps"},
    }
    values = {"metrics": {"grafanaDashboard": dashboard_values}}
    release = chart_helm.render(values)
    dashboard = release.one("ConfigMap", "lifespan-sidecar-dashboard")
    validate_k8s(dashboard)
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "apps"}
    shipped = json.loads(dashboard["data"]["lifespan-sidecar.json"])
    assert shipped == json.loads(DASHBOARD.read_text())
