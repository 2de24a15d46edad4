"""The Grafana dashboard only queries metrics a live sidecar exports, so it cannot rot."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from . import apps
from .conftest import ROOT, fetch
from .metrics_util import scrape_samples

DASHBOARD = ROOT / "charts" / "lifespan-sidecar" / "files" / "dashboard.json"
ALERTS = ROOT / "charts" / "lifespan-sidecar" / "files" / "alerts.yaml"
# Names that belong to PromQL or to Grafana, not to the sidecar.
_NOT_METRICS = {"by", "le", "sum", "max", "count", "rate", "increase", "histogram_quantile",
                "job", "instance", "phase", "code", "reason", "method", "unless", "on",
                "label_values", "vector", "and", "or", "max_over_time", "min_over_time",
                "time", "stage", "namespace", "pod", "container", "route", "status_class",
                "topk"}  # fmt: skip
# What kube-state-metrics exports (the crash-loop alert reads it, not the sidecar's series).
_KUBE_STATE_METRICS = {"kube_pod_container_status_last_terminated_exitcode",
                       "kube_pod_container_status_restarts_total"}  # fmt: skip


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not names
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # nor are ranges
    return {
        token
        for token in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
        if token not in _NOT_METRICS and not token.startswith("__")
    }


def _exported(running: Any) -> set[str]:
    # traffic, so that labelled families have samples to show
    fetch(running.app("/"))
    fetch(running.app("/"), "POST", body=b"x")
    fetch(running.app("/items/1"))
    text = fetch(running.admin("/metrics")).text
    # Families without samples yet count too (the last startup failure's time).
    declared = set(re.findall(r"^# TYPE (\S+) gauge$", text, re.MULTILINE))
    return {name for name, _ in scrape_samples(text)} | declared


def _queries() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in document["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in document["templating"]["list"] if v.get("definition")]
    return exprs


def test_every_dashboard_query_uses_exported_metrics(run_sidecar: Any) -> None:
    running = run_sidecar(apps.routed)
    exported = _exported(running)
    queries = _queries()
    assert len(queries) >= 10
    missing = {name for expr in queries for name in _metric_names(expr)} - exported
    assert missing == set(), f"the dashboard queries metrics nobody exports: {sorted(missing)}"


def test_every_alert_uses_exported_metrics(run_sidecar: Any) -> None:
    running = run_sidecar(apps.routed)
    exported = _exported(running)
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    queried = {name for rule in rules for name in _metric_names(rule["expr"])}
    missing = queried - exported - _KUBE_STATE_METRICS
    assert missing == set(), f"alerts query metrics nobody exports: {sorted(missing)}"


def test_dashboard_shows_what_operators_need() -> None:
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    for needed in ("Lifecycle phase per pod", "Startup duration", "Startup failures",
                   "Ready pods", "Request rate by status", "Latency percentiles",
                   "Requests in flight", "Event-loop lag", "Drain duration",
                   "Requests cut at shutdown", "Request rate by route", "p99 latency by route",
                   "5xx ratio by route"):  # fmt: skip
        assert needed in titles


def test_request_panels_follow_the_route_variable() -> None:
    document = json.loads(DASHBOARD.read_text())
    names = [variable["name"] for variable in document["templating"]["list"]]
    assert "route" in names
    panels = [t["expr"] for panel in document["panels"] for t in panel.get("targets", [])]
    for expr in panels:
        if "sidecar_http_request" in expr and "in_flight" not in expr and "aborted" not in expr:
            assert 'route=~"$route"' in expr, expr
