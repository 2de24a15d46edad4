"""A real Prometheus server scrapes a running sidecar on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import LOOPBACK, ROOT, WAIT, fetch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """A Prometheus server with its own data directory, scraping the given targets."""

    def __init__(self, tmp: Path, targets: dict[str, tuple[str, str]]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is required (Debian package 'prometheus'; .ci/run installs it)"
        self.port = _free_port()
        jobs = []
        for job, (address, fmt) in targets.items():
            jobs.append(
                {
                    "job_name": job,
                    "scrape_interval": "1s",
                    "scrape_timeout": "900ms",
                    "metrics_path": "/metrics",
                    "params": {"format": [fmt]},
                    "static_configs": [{"targets": [address]}],
                }
            )
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({"global": {"evaluation_interval": "1s"},
                                          "scrape_configs": jobs}))  # fmt: skip
        self.log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=5) as response:
            document = json.load(response)
        assert document["status"] == "success", document
        return list(document["data"]["result"])

    def value(self, expr: str) -> float | None:
        try:
            result = self.query(expr)
        except OSError:
            return None  # not listening yet
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate: Any, timeout: float = WAIT) -> float:
        """Poll an expression until its value satisfies ``predicate`` (scrapes are periodic)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited"
            last = self.value(expr)
            if last is not None and predicate(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"{expr} never satisfied the condition; last value {last}")

    def target_errors(self) -> list[str]:
        url = f"http://127.0.0.1:{self.port}/api/v1/targets"
        with urllib.request.urlopen(url, timeout=5) as response:
            document = json.load(response)
        return [t["lastError"] for t in document["data"]["activeTargets"] if t["lastError"]]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(targets: dict[str, tuple[str, str]]) -> Prometheus:
        server = Prometheus(tmp_path, targets)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_a_real_prometheus_scrapes_both_formats(cli: Any, prometheus: Any) -> None:
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "0")
    proc.wait_serving()
    admin = proc.admin_url.removeprefix("http://")
    server = prometheus({"text": (admin, "text"), "openmetrics": (admin, "openmetrics")})
    for job in ("text", "openmetrics"):
        server.wait_for(f'up{{job="{job}"}}', lambda v: v == 1)
        assert server.wait_for(f'sidecar_ready{{job="{job}"}}', lambda v: True) == 1
        duration = server.wait_for(
            f'sidecar_lifespan_startup_duration_seconds{{job="{job}"}}', lambda v: True
        )
        assert duration > 0
    before = server.wait_for(
        'sum(sidecar_http_requests_total{job="text"}) or vector(0)', lambda v: True
    )
    for _ in range(5):
        assert fetch(proc.app_url + "/").status == 200
    for job in ("text", "openmetrics"):
        server.wait_for(
            f'sum(sidecar_http_requests_total{{job="{job}",code="200"}})',
            lambda v, floor=before: v >= floor + 5,
        )
    assert server.target_errors() == []
    proc.signal()
    assert proc.wait() == 0


def test_startup_failures_are_scraped(cli: Any, prometheus: Any, tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "lifespan:\n  startup_attempts: 3\n  retry_backoff: 0.05\nshutdown:\n  drain_delay: 0\n"
    )
    proc = cli("run", "cli_apps:fails_twice", *LOOPBACK, "--config", str(config))
    proc.wait_serving()
    admin = proc.admin_url.removeprefix("http://")
    server = prometheus({"sidecar": (admin, "text")})
    failures = server.wait_for(
        'sum(sidecar_lifespan_startup_failures_total{job="sidecar"})', lambda v: True
    )
    assert failures == 2
    by_reason = server.wait_for(
        'sidecar_lifespan_startup_failures_total{job="sidecar",reason="failed"}', lambda v: True
    )
    assert by_reason == 2
    proc.signal()
    assert proc.wait() == 0


DASHBOARD = ROOT / "charts" / "lifespan-sidecar" / "files" / "dashboard.json"


def test_the_route_panels_show_the_routes_of_a_live_sidecar(cli: Any, prometheus: Any) -> None:
    proc = cli("run", "apps:routed", *LOOPBACK, "--drain-delay", "0")
    proc.wait_serving()
    server = prometheus({"sidecar": (proc.admin_url.removeprefix("http://"), "text")})
    server.wait_for('up{job="sidecar"}', lambda v: v == 1)

    def traffic() -> None:
        assert fetch(proc.app_url + "/items/1").status == 200
        assert fetch(proc.app_url + "/fail").status == 503
        assert fetch(proc.app_url + "/nowhere").status == 404

    # Once Prometheus has seen the series, more traffic makes them increase: a rate.
    traffic()
    server.wait_for('count(sidecar_http_requests_total{job="sidecar"})', lambda v: v == 3)
    for _ in range(4):
        traffic()
    server.wait_for('sum(sidecar_http_requests_total{job="sidecar"})', lambda v: v >= 15)
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    expected = {
        "Request rate by route": {"/items/{id}", "/fail", "unmatched"},
        "p99 latency by route": {"/items/{id}", "/fail", "unmatched"},
        # Routes without a 5xx have no numerator series, so no ratio.
        "5xx ratio by route": {"/fail"},
    }
    for title, routes in expected.items():
        expr = panels[title]["targets"][0]["expr"]
        for variable, value in (("$job", ".*"), ("$instance", ".*"), ("$route", ".*"),
                                ("$__rate_interval", "1m")):  # fmt: skip
            expr = expr.replace(variable, value)
        # A rate needs two scrapes of each series: poll until Prometheus has them.
        deadline = time.monotonic() + WAIT
        result = server.query(expr)
        while {s["metric"]["route"] for s in result} != routes and time.monotonic() < deadline:
            time.sleep(0.2)
            result = server.query(expr)
        assert {series["metric"]["route"] for series in result} == routes, (title, result)
        if title == "5xx ratio by route":
            ratio = {s["metric"]["route"]: float(s["value"][1]) for s in result}
            assert ratio == {"/fail": 1.0}
    proc.signal()
    assert proc.wait() == 0
