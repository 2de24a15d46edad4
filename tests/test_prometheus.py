"""A real Prometheus server scrapes a running sidecar on loopback."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import LOOPBACK, ROOT, WAIT, fetch, fetch_quietly


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """A Prometheus server with its own data directory, scraping the given targets."""

    def __init__(
        self, tmp: Path, targets: dict[str, tuple[str, str]], rule_files: tuple[Path, ...] = ()
    ) -> None:
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
                                          "rule_files": [str(f) for f in rule_files],
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

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts the server's rules hold now (pending and firing)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/alerts"
        with urllib.request.urlopen(url, timeout=5) as response:
            document = json.load(response)
        return list(document["data"]["alerts"])

    def wait_for_alert(self, name: str, timeout: float = WAIT, **labels: str) -> dict[str, Any]:
        """Wait until alert ``name`` with ``labels`` is firing; return it."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited"
            try:
                seen = self.alerts()
            except OSError:
                seen = []
            for alert in seen:
                wanted = {"alertname": name, **labels}
                if alert["state"] == "firing" and wanted.items() <= alert["labels"].items():
                    return alert
            time.sleep(0.2)
        raise AssertionError(f"{name}{labels} never fired; alerts: {seen}")

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

    def start(targets: dict[str, tuple[str, str]], rule_files: tuple[Path, ...] = ()) -> Prometheus:
        server = Prometheus(tmp_path, targets, rule_files)
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


# -- the shipped alerts, fired by a real Prometheus from what it scraped --------------------------

RULES = ROOT / "charts" / "lifespan-sidecar" / "files" / "alerts.yaml"
_UNITS = {"s": 1, "m": 60, "h": 3600}


def _scaled_rules(tmp: Path) -> Path:
    """The shipped rules with every ``for:`` divided by 60 (a minute becomes a second).

    Nothing else changes: the expressions, their ranges and the labels are the shipped
    ones. The scrape and evaluation intervals (1 s) are scaled the same way.
    """
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                number, unit = int(rule["for"][:-1]), rule["for"][-1]
                rule["for"] = f"{max(number * _UNITS[unit] // 60, 1)}s"
    scaled = tmp / "alerts.yaml"
    scaled.write_text(yaml.safe_dump(document))
    return scaled


class Pod:
    """One pod's sidecar container as the kubelet runs it: restarted whenever it exits.

    Every container of the pod shares the admin port (the target Prometheus scrapes)
    and the state directory (the pod's emptyDir).
    """

    def __init__(self, cli: Any, tmp: Path, name: str, app: str, *flags: str) -> None:
        self.admin_port = _free_port()
        self.state_dir = tmp / f"state-{name}"
        self.state_dir.mkdir()
        self._cli, self._app, self._flags = cli, app, flags
        self._stopped = threading.Event()
        self._exited = threading.Condition()
        self.exit_codes: list[int] = []
        self.current: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def start(self) -> Pod:
        self._thread.start()
        return self

    def start_container(self) -> Any:
        return self._cli(
            "run", self._app, "--host", "127.0.0.1", "--port", "0",
            "--admin-host", "127.0.0.1", "--admin-port", str(self.admin_port),
            "--drain-delay", "0", *self._flags,
            env={
                "SIDECAR_LIFESPAN_STATE_DIR": str(self.state_dir),
                "SIDECAR_LIFESPAN_FAILURE_LINGER": "3",
            },
        )  # fmt: skip

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.current = self.start_container()
            code = self.current.wait(timeout=120)
            with self._exited:
                self.exit_codes.append(code)
                self._exited.notify_all()

    def wait_exits(self, count: int) -> list[int]:
        """Wait until ``count`` containers have exited; return their exit codes."""
        with self._exited:
            assert self._exited.wait_for(lambda: len(self.exit_codes) >= count, WAIT)
            return list(self.exit_codes)

    def stop(self) -> None:
        self._stopped.set()
        if self.current is not None:
            self.current.kill()
        self._thread.join(30)


def test_startup_failure_alerts_fire_from_what_prometheus_scraped(
    cli: Any, prometheus: Any, tmp_path: Path
) -> None:
    failing = {
        "import": Pod(cli, tmp_path, "import", "broken_import:app"),
        "failed": Pod(cli, tmp_path, "failed", "cli_apps:fails_startup"),
        "timeout": Pod(
            cli, tmp_path, "timeout", "cli_apps:hangs_in_startup", "--startup-timeout", "0.5"
        ),
    }
    healthy = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "0")
    healthy.wait_serving()
    # A container that stops cleanly and is started again: no failure to alert on.
    restarted = Pod(cli, tmp_path, "restarted", "cli_apps:slow_startup")
    first = restarted.start_container()
    first.wait_serving()
    targets = {job: (pod.target, "text") for job, pod in failing.items()}
    targets["healthy"] = (healthy.admin_url.removeprefix("http://"), "text")
    targets["restarted"] = (restarted.target, "text")
    server = prometheus(targets, (_scaled_rules(tmp_path),))
    server.wait_for('up{job="restarted"}', lambda v: v == 1)
    first.signal()
    assert first.wait() == 0
    second = restarted.start_container()
    second.wait_serving()
    for pod in failing.values():
        pod.start()
    try:
        for reason in failing:
            alert = server.wait_for_alert("SidecarStartupFailing", job=reason, reason=reason)
            assert alert["labels"]["severity"] == "warning"
            assert f'reason "{reason}"' in alert["annotations"]["description"]
        # A crash loop: each failing pod goes through container after container, each
        # exiting 3, and the alert holds across the restarts.
        for pod in failing.values():
            assert set(pod.wait_exits(2)) == {3}
        for reason in failing:
            server.wait_for_alert("SidecarStartupFailing", job=reason, reason=reason)
        for job in ("healthy", "restarted"):
            server.wait_for(f'sidecar_ready{{job="{job}"}}', lambda v: v == 1)
            noisy = [a for a in server.alerts() if a["labels"].get("job") == job]
            assert noisy == [], noisy
    finally:
        for pod in failing.values():
            pod.stop()
    second.signal()
    assert second.wait() == 0


def test_requests_cut_at_the_drain_deadline_fire_their_alert(
    cli: Any, prometheus: Any, tmp_path: Path
) -> None:
    cut = Pod(
        cli, tmp_path, "cut", "cli_apps:never_lets_go",
        "--graceful-timeout", "0.5", "--shutdown-timeout", "0.5",
    )  # fmt: skip
    clean = Pod(cli, tmp_path, "clean", "cli_apps:slow_startup")
    containers = {"cut": cut.start_container(), "clean": clean.start_container()}
    for container in containers.values():
        container.wait_serving()
    server = prometheus(
        {"cut": (cut.target, "text"), "clean": (clean.target, "text")}, (_scaled_rules(tmp_path),)
    )
    for job in containers:
        server.wait_for(f'sidecar_http_requests_aborted_total{{job="{job}"}}', lambda v: v == 0)
    app_url = containers["cut"].app_url
    threading.Thread(target=fetch_quietly, args=(app_url + "/hang",), daemon=True).start()
    containers["cut"].wait_line("hang began")
    for container in containers.values():
        container.signal()
    containers["cut"].wait_line(re.escape("1 request(s) were cut; the admin port stays up"))
    alert = server.wait_for_alert("SidecarRequestsAbortedDuringDrain", job="cut")
    assert alert["annotations"]["summary"].endswith("cut 1 request(s) at shutdown")
    assert containers["cut"].wait() == 0
    assert containers["clean"].wait() == 0
    assert [a for a in server.alerts() if a["labels"].get("job") == "clean"] == []


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
