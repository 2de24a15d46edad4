"""Metrics over a real scrape: names, values, formats, and promtool's verdict."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from sidecar import __version__
from sidecar.metrics import Metrics, RequestStats

from . import apps
from .conftest import LOOPBACK, ROOT, LogWatch, fetch
from .metrics_util import scrape_samples

PHASES = ("starting", "ready", "draining", "stopping", "stopped", "failed")


def scrape(running: Any, accept: str | None = None) -> tuple[str, str]:
    reply = fetch(running.admin("/metrics"), headers={"Accept": accept} if accept else None)
    assert reply.status == 200
    return reply.text, reply.headers["content-type"]


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_values_after_traffic(run_sidecar: Any) -> None:
    running = run_sidecar(apps.faulty)
    for _ in range(3):
        assert fetch(running.app("/ok")).status == 200
    assert fetch(running.app("/raise-before")).status == 500
    assert fetch(running.app("/ok"), "POST", body=b"x").status == 200
    assert fetch(running.app("/ok"), "PROPFIND").status == 200
    # A request is counted right after its response is written, in the same step of
    # the app loop; the client can read the response before that step ends.
    running.sync()
    text, content_type = scrape(running)
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = scrape_samples(text)
    # a raw ASGI app has no router: its requests count as unmatched
    unmatched = {"route": "unmatched"}
    assert value(samples, "sidecar_http_requests_total", method="GET", code="200", **unmatched) == 3
    assert value(samples, "sidecar_http_requests_total", method="GET", code="500", **unmatched) == 1
    assert (
        value(samples, "sidecar_http_requests_total", method="POST", code="200", **unmatched) == 1
    )
    # client-chosen methods do not create new series
    assert (
        value(samples, "sidecar_http_requests_total", method="other", code="200", **unmatched) == 1
    )
    duration = "sidecar_http_request_duration_seconds_count"
    assert value(samples, duration, method="GET", status_class="2xx", **unmatched) == 3
    assert value(samples, duration, method="GET", status_class="5xx", **unmatched) == 1
    assert value(samples, "sidecar_http_requests_in_flight") == 0
    for phase in PHASES:
        expected = 1 if phase == "ready" else 0
        assert value(samples, "sidecar_lifecycle_phase", phase=phase) == expected
    assert value(samples, "sidecar_ready") == 1
    assert value(samples, "sidecar_lifespan_startup_duration_seconds") > 0
    for reason in ("failed", "exception", "timeout", "import"):
        assert value(samples, "sidecar_lifespan_startup_failures_total", reason=reason) == 0
    for reason in ("failed", "exception", "timeout"):
        assert value(samples, "sidecar_lifespan_shutdown_failures_total", reason=reason) == 0
    build = [k for k in samples if k[0] == "sidecar_build_info"]
    assert len(build) == 1
    assert dict(build[0][1])["version"] == __version__


def test_in_flight_counts_a_running_request(run_sidecar: Any) -> None:
    app = apps.SlowRequests()
    running = run_sidecar(app)
    slow = threading.Thread(target=fetch, args=(running.app("/slow"),))
    slow.start()
    assert app.entered.wait(30)
    samples = scrape_samples(scrape(running)[0])
    app.release()
    slow.join(30)
    assert value(samples, "sidecar_http_requests_in_flight") == 1


def test_phase_and_ready_follow_the_drain(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    assert fetch(running.admin("/prestop")).status == 200
    samples = scrape_samples(scrape(running)[0])
    assert value(samples, "sidecar_lifecycle_phase", phase="draining") == 1
    assert value(samples, "sidecar_lifecycle_phase", phase="ready") == 0
    assert value(samples, "sidecar_ready") == 0


def test_ready_and_live_are_the_probes_verdicts_not_the_phase(
    run_sidecar: Any, logs: LogWatch
) -> None:
    # A critical readiness check that fails: the phase is still "ready", the pod is not.
    app = apps.registers(
        lambda health: health.add_readiness_check(
            "db", apps.check_fails, interval=0.05, failure_threshold=1
        )
    )
    running = run_sidecar(app)
    logs.wait_for(r"health check 'db' \(readiness\) failed")
    assert fetch(running.admin("/readyz")).status == 503
    samples = scrape_samples(scrape(running)[0])
    assert value(samples, "sidecar_lifecycle_phase", phase="ready") == 1
    assert value(samples, "sidecar_ready") == 0
    assert value(samples, "sidecar_live") == 1
    assert fetch(running.admin("/livez")).status == 200


def test_durations_come_from_a_high_resolution_clock(run_sidecar: Any) -> None:
    # A loop's cached millisecond clock gave 0.0 for a fast startup.
    running = run_sidecar(apps.lifespan_app())
    duration = running.sidecar.metrics.registry.get_sample_value(
        "sidecar_lifespan_startup_duration_seconds"
    )
    assert duration is not None
    assert 0 < duration < 30
    assert duration * 1000 != round(duration * 1000)  # finer than milliseconds


def test_request_metrics_can_be_turned_off(run_sidecar: Any) -> None:
    running = run_sidecar(apps.http_only, metrics__requests="false")
    fetch(running.app("/"))
    text, _ = scrape(running)
    assert "sidecar_http_requests_total{" not in text
    assert "sidecar_ready 1.0" in text


def test_openmetrics_when_asked(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    fetch(running.app("/"))
    text, content_type = scrape(running, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    names = {family.name for family in parse_om(text)}
    assert {"sidecar_http_requests", "sidecar_lifecycle_phase", "sidecar_build"} <= names


def test_process_collectors_are_exported(cli: Any) -> None:
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "0")
    proc.wait_serving()
    text = fetch(proc.admin_url + "/metrics").text
    proc.signal()
    assert proc.wait() == 0
    for name in (
        "process_resident_memory_bytes",
        "python_info",
        "python_gc_objects_collected_total",
    ):
        assert name in text


def test_promtool_accepts_the_exposition(run_sidecar: Any) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package 'prometheus'; .ci/run installs it)"
    running = run_sidecar(apps.faulty)
    fetch(running.app("/ok"))
    fetch(running.app("/raise-before"))
    text, _ = scrape(running)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert result.stderr.strip() == "", result.stderr


def test_drain_and_abort_metrics(run_sidecar: Any) -> None:
    app = apps.IgnoresDisconnect()
    running = run_sidecar(app, shutdown__graceful_timeout=0.1, shutdown__drain_delay=0.2)
    replies: list[Any] = []
    client = threading.Thread(target=lambda: replies.append(fetch(running.app("/"))))
    client.start()
    assert app.entered.wait(30)
    samples = scrape_samples(scrape(running)[0])
    assert value(samples, "sidecar_connections_open") == 1
    assert value(samples, "sidecar_websocket_connections") == 0
    assert running.stop() is None
    client.join(30)
    # Cut before its response began: answered 503, so the client can tell it from a
    # network failure and retry elsewhere.
    assert replies[0].status == 503
    assert replies[0].headers["retry-after"] == "1"
    assert replies[0].headers["connection"] == "close"
    assert app.cancelled.is_set()
    registry = running.sidecar.metrics.registry
    aborted = "sidecar_http_requests_aborted_total"
    assert registry.get_sample_value(aborted, {"stage": "before_response"}) == 1
    assert registry.get_sample_value(aborted, {"stage": "during_response"}) == 0
    assert (
        registry.get_sample_value(
            "sidecar_http_requests_total", {"method": "GET", "route": "unmatched", "code": "503"}
        )
        == 1
    )
    drain = registry.get_sample_value("sidecar_drain_duration_seconds")
    assert drain is not None
    assert drain >= 0.2


def test_websocket_gauge(run_sidecar: Any) -> None:
    import aiohttp

    app = apps.WebSocketApp()
    running = run_sidecar(app)
    seen: dict[str, float] = {}

    async def talk() -> None:
        async with aiohttp.ClientSession() as session:
            url = running.app("/wait").replace("http://", "ws://")
            async with session.ws_connect(url):
                assert app.accepted.wait(30)
                samples = scrape_samples(scrape(running)[0])
                seen["open"] = value(samples, "sidecar_websocket_connections")

    asyncio.run(talk())
    assert seen["open"] == 1


def test_format_parameter_overrides_accept(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    reply = fetch(running.admin("/metrics?format=openmetrics"))
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    reply = fetch(
        running.admin("/metrics?format=text"),
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")


# -- routes, status classes and series hygiene ------------------------------------------


def families(collector: Any) -> dict[str, Any]:
    return {family.name: family for family in collector.collect()}


def test_routes_label_requests_and_are_capped() -> None:
    stats = RequestStats(max_routes=2)
    stats.observe("GET", "/users/{id}", 200, 0.003)
    stats.observe("GET", "/users/{id}", 404, 0.002)
    stats.observe("POST", "/items", 201, 0.2)
    stats.observe("GET", "/third", 200, 0.001)  # past the cap
    stats.observe("GET", "/fourth", 200, 0.001)
    stats.observe("GET", "unmatched", 404, 0.001)  # never counts towards the cap
    stats.observe("BREW", "/items", 201, 0.001)  # a method the client made up
    stats.observe("PROPFIND", "/items", 201, 0.001)
    found = families(stats)
    counts = {
        (s.labels["method"], s.labels["route"], s.labels["code"]): s.value
        for s in found["sidecar_http_requests"].samples
    }
    assert counts == {
        ("GET", "/users/{id}", "200"): 1,
        ("GET", "/users/{id}", "404"): 1,
        ("POST", "/items", "201"): 1,
        ("GET", "other", "200"): 2,
        ("GET", "unmatched", "404"): 1,
        ("other", "/items", "201"): 2,
    }
    histogram = found["sidecar_http_request_duration_seconds"]
    count = {
        (s.labels["method"], s.labels["route"], s.labels["status_class"]): s.value
        for s in histogram.samples
        if s.name.endswith("_count")
    }
    assert count == {
        ("GET", "/users/{id}", "2xx"): 1,
        ("GET", "/users/{id}", "4xx"): 1,
        ("POST", "/items", "2xx"): 1,
        ("GET", "other", "2xx"): 2,
        ("GET", "unmatched", "4xx"): 1,
        ("other", "/items", "2xx"): 2,
    }
    slow = [
        s.value
        for s in histogram.samples
        if s.name.endswith("_bucket")
        and (s.labels["method"], s.labels["route"], s.labels["le"]) == ("POST", "/items", "0.1")
    ]
    assert slow == [0]  # the 0.2 s request is above the 0.1 s bucket


def test_opentelemetry_names_and_labels() -> None:
    stats = RequestStats(names="opentelemetry")
    stats.observe("GET", "/users/{id}", 200, 0.06)
    stats.observe("BREW", "unmatched", 404, 0.001)
    found = families(stats)
    assert "sidecar_http_requests" not in found
    histogram = found["http_server_request_duration_seconds"]
    counts = {
        tuple(
            s.labels[k] for k in ("http_request_method", "http_route", "http_response_status_code")
        ): s.value
        for s in histogram.samples
        if s.name.endswith("_count")
    }
    assert counts == {("GET", "/users/{id}", "200"): 1, ("_OTHER", "", "404"): 1}
    bounds = {s.labels["le"] for s in histogram.samples if s.name.endswith("_bucket")}
    assert "0.075" in bounds  # the semantic conventions' boundaries
    assert "sidecar_http_requests_in_flight" in found


def test_no_created_series_and_check_failures_start_at_zero() -> None:
    metrics = Metrics(version="1", phases=["ready"], process_collectors=False)
    metrics.add_check("postgres")
    text = metrics.render(None)[0].decode()
    assert "_created" not in text
    assert 'sidecar_health_check_failures_total{check="postgres"} 0.0' in text
    openmetrics = metrics.render("application/openmetrics-text; version=1.0.0")[0].decode()
    assert "_created" not in openmetrics


def test_other_registries_keep_their_created_series() -> None:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    Metrics(version="1", phases=["ready"], process_collectors=False)
    registry = CollectorRegistry()
    Counter("app_things", "Things the app counts.", registry=registry).inc()
    assert b"app_things_created" in generate_latest(registry)


def test_a_check_exports_its_failure_counter_before_it_fails(run_sidecar: Any) -> None:
    from sidecar.health import STATE_KEY

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"][STATE_KEY].add_readiness_check("db", lambda: True, interval=60)
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await apps.respond(send)

    running = run_sidecar(app)
    samples = scrape_samples(scrape(running)[0])
    assert value(samples, "sidecar_health_check_failures_total", check="db") == 0
