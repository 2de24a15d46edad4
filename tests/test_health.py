"""Health checks: registered by the app or configured, run in the background, cached.

Tests wait on events: a check announces each call it begins (so every earlier run has
been recorded), and the sidecar logs each check's passing/failing transition.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sidecar import (
    STATE_KEY,
    AppLoadError,
    CheckFailed,
    CheckRegistrationError,
    HealthChecks,
    health_checks,
)
from sidecar.health import CheckScheduler
from sidecar.metrics import Metrics

from . import apps
from .conftest import ROOT, WAIT, LogWatch, fetch
from .metrics_util import sample, scrape_samples

JSON = {"Accept": "application/json"}


def check_document(running: Any, probe: str, name: str) -> dict[str, Any]:
    document = fetch(running.admin(f"/{probe}"), headers=JSON).json()
    return next(c for c in document["checks"] if c["name"] == name)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_failing_check_fails_readiness_after_its_threshold_and_recovers(
    run_sidecar: Any, logs: LogWatch, kind: str
) -> None:
    check = apps.ScriptedCheck()
    function = check.sync if kind == "sync" else check.run
    app = apps.registers(
        lambda health: health.add_readiness_check(
            "db", function, interval=0.01, failure_threshold=4, tags=["database"]
        )
    )
    running = run_sidecar(app)
    registry = running.sidecar.metrics.registry
    check.wait_for_call(2)  # the first run has been recorded
    assert fetch(running.admin("/readyz")).status == 200

    check.error = "connection refused"
    calls = check.calls  # every later call sees the error
    check.wait_for_call(calls + 2)  # at most 3 failures recorded: below the threshold
    assert fetch(running.admin("/readyz")).status == 200
    check.wait_for_call(calls + 5)  # 4 failures in a row recorded
    reply = fetch(running.admin("/readyz?verbose"))
    assert reply.status == 503
    assert re.search(
        r"\[-\]db failed: RuntimeError: connection refused \(\d+ failures in a row\)", reply.text
    ), reply.text
    details = check_document(running, "readyz", "db")
    assert details["ok"] is False
    assert details["tags"] == ["database"]
    assert details["details"]["status"] == "failing"
    assert details["details"]["last_result"] == "failed"
    assert details["details"]["last_error"] == "RuntimeError: connection refused"
    assert details["details"]["consecutive_failures"] >= 4
    assert details["details"]["failure_threshold"] == 4
    assert details["details"]["source"] == "app"
    assert sample(registry, "sidecar_health_check_status", check="db") == 0
    assert sample(registry, "sidecar_health_check_failures_total", check="db") >= 4
    assert len(logs.messages(r"health check 'db' \(readiness\) failed: RuntimeError")) == 1

    check.error = None
    calls = check.calls
    check.wait_for_call(calls + 2)  # a success has been recorded
    assert fetch(running.admin("/readyz")).status == 200
    assert sample(registry, "sidecar_health_check_status", check="db") == 1
    assert check_document(running, "readyz", "db")["details"]["consecutive_failures"] == 0
    logs.wait_for(r"health check 'db' \(readiness\) passes")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_hanging_check_never_delays_a_probe(run_sidecar: Any, logs: LogWatch, kind: str) -> None:
    check = apps.ScriptedCheck()
    check.hang = True
    function = check.sync if kind == "sync" else check.run
    app = apps.registers(
        lambda health: health.add_readiness_check(
            "slow", function, timeout=0.5, interval=0.05, failure_threshold=1
        )
    )
    running = run_sidecar(app)
    try:
        check.wait_for_call(1)
        began = time.monotonic()
        pending = fetch(running.admin("/readyz?verbose"), timeout=5)
        elapsed = time.monotonic() - began
        logs.wait_for(r"health check 'slow' \(readiness\) failed: timed out after 0.5s")
        began = time.monotonic()
        failed = fetch(running.admin("/readyz?verbose"), timeout=5)
        elapsed = max(elapsed, time.monotonic() - began)
        if kind == "async":
            assert check.cancelled.wait(WAIT)  # the hung coroutine was cancelled
        else:  # a thread cannot be cancelled: later runs wait for it instead of piling up
            logs.wait_for(r"the run started \d+\.\ds ago has not finished \(timeout 0.5s\)")
            assert check.calls == 1
        assert fetch(running.admin("/livez")).status == 200
    finally:
        check.release()
    # The probe read the cached state: far inside the check's own 0.5 s timeout.
    assert elapsed < 0.25
    assert pending.status == 503  # a readiness check counts only once it has passed
    assert "[-]slow failed: no result yet: the first run has not finished" in pending.text
    assert failed.status == 503
    assert "[-]slow failed: timed out after 0.5s (1 failure in a row)" in failed.text
    registry = running.sidecar.metrics.registry
    assert sample(registry, "sidecar_health_check_duration_seconds_sum", check="slow") >= 0.5


def test_a_warning_check_is_reported_but_does_not_fail_the_probe(
    run_sidecar: Any, logs: LogWatch
) -> None:
    check = apps.ScriptedCheck()
    check.error = "cache cluster unreachable"
    app = apps.registers(
        lambda health: health.add_readiness_check(
            "cache", check.sync, interval=0.05, failure_threshold=1, severity="warning"
        )
    )
    running = run_sidecar(app)
    logs.wait_for(r"health check 'cache' \(readiness\) failed")
    reply = fetch(running.admin("/readyz?verbose"))
    assert reply.status == 200
    assert (
        "[-]cache failed: RuntimeError: cache cluster unreachable (1 failure in a row) "
        "(severity warning: not counted)"
    ) in reply.text
    assert reply.text.endswith("readyz check passed\n")
    assert fetch(running.admin("/readyz")).text == "ok"
    # Asked for by name, the check answers for itself.
    assert fetch(running.admin("/readyz/cache")).status == 503
    document = check_document(running, "readyz", "cache")
    assert (document["ok"], document["critical"]) == (False, False)
    registry = running.sidecar.metrics.registry
    assert sample(registry, "sidecar_health_check_status", check="cache") == 0


def test_a_liveness_check_fails_livez_only(run_sidecar: Any, logs: LogWatch) -> None:
    check = apps.ScriptedCheck()
    check.error = "worker thread is dead"
    app = apps.registers(
        lambda health: health.add_liveness_check(
            "worker", check.sync, interval=0.02, failure_threshold=2
        )
    )
    running = run_sidecar(app)
    logs.wait_for(r"health check 'worker' \(liveness\) failed: .* \(2 failures in a row\)")
    live = fetch(running.admin("/livez?verbose"))
    assert live.status == 503
    assert "[-]worker failed: RuntimeError: worker thread is dead" in live.text
    assert fetch(running.admin("/readyz")).status == 200
    assert fetch(running.admin("/livez/worker")).status == 503
    assert fetch(running.admin("/readyz/worker")).status == 404


def test_the_handle_is_in_the_lifespan_state_but_not_in_requests(run_sidecar: Any) -> None:
    seen: list[HealthChecks] = []
    running = run_sidecar(apps.registers(seen.append))
    assert len(seen) == 1
    assert isinstance(seen[0], HealthChecks)
    # Requests get copies of the app's own state only.
    assert fetch(running.app("/")).json() == []


def test_health_checks_reaches_a_starlette_lifespan(run_sidecar: Any) -> None:
    check = apps.ScriptedCheck()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        # Starlette's lifespan never sees scope["state"]; the context variable does.
        health_checks().add_readiness_check("pool", check.run, interval=0.02)
        yield {"pool": "a pool"}

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.state.pool)

    app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
    running = run_sidecar(app)
    check.wait_for_call(2)
    assert "[+]pool ok" in fetch(running.admin("/readyz?verbose")).text
    assert fetch(running.app("/")).text == "a pool"
    with pytest.raises(LookupError, match="not running under `sidecar run`"):
        health_checks()


def test_checks_of_a_failed_startup_attempt_are_dropped(run_sidecar: Any, logs: LogWatch) -> None:
    check = apps.ScriptedCheck()
    handles: list[HealthChecks] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await apps.respond(send)
            return
        await receive()
        health = scope["state"][STATE_KEY]
        handles.append(health)
        # The same name each attempt: a check kept from the failed one would clash.
        health.add_readiness_check("db", check.sync, interval=0.02)
        if len(handles) == 1:
            await send({"type": "lifespan.startup.failed", "message": "migrations pending"})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    running = run_sidecar(app, lifespan__startup_attempts=2, lifespan__retry_backoff=0.01)
    assert len(handles) == 2
    assert running.sidecar.checks.names() == ["db"]
    with pytest.raises(CheckRegistrationError, match="this startup attempt has ended"):
        handles[0].add_readiness_check("late", check.sync)
    logs.wait_for(r"health check 'db' \(readiness\) passes")
    assert fetch(running.admin("/readyz?verbose")).text.count("[+]db ok") == 1


def test_checks_stop_before_the_lifespan_shutdown(run_sidecar: Any) -> None:
    check = apps.ScriptedCheck()
    record: dict[str, Any] = {}
    late: list[int] = []

    async def pool_ping() -> None:
        if record.get("shutdown_began"):
            late.append(check.calls)  # the app is closing its pool: too late to ping it
        await check.run()

    app = apps.registers(
        lambda health: health.add_readiness_check("pool", pool_ping, interval=0.001), record
    )
    running = run_sidecar(app)
    check.wait_for_call(3)
    assert running.stop() is None
    assert record["shutdown_began"]
    assert late == []


def test_registration_errors_name_every_problem() -> None:
    metrics = Metrics(version="test", phases=["ready"], process_collectors=False)
    health = HealthChecks(CheckScheduler(metrics))
    with pytest.raises(CheckRegistrationError) as info:
        health.add_readiness_check(
            "no spaces",
            "not a function",  # type: ignore[arg-type]
            timeout=0,
            interval=float("inf"),
            failure_threshold=0,
            severity="fatal",  # type: ignore[arg-type]
            tags=["ok", "not ok"],
        )
    # The same rules and words as for health.checks in the configuration.
    assert str(info.value) == (
        "cannot add health check 'no spaces': invalid value 0 for timeout; expected a number "
        "of seconds > 0 (fractions allowed, e.g. 0.5); invalid value inf for interval; "
        "expected a number of seconds > 0 (fractions allowed, e.g. 0.5); invalid value 0 for "
        "failure_threshold; expected an integer >= 1; invalid value 'fatal' for severity; "
        "expected one of 'critical', 'warning'; invalid value ('ok', 'not ok') for tags; "
        "expected a list of names (1 to 63 letters, digits, '.', '_' or '-', starting with a "
        "letter or digit); invalid value 'no spaces' for name; expected 1 to 63 letters, "
        "digits, '.', '_' or '-', starting with a letter or digit; the check must be "
        "callable, got str"
    )
    health.add_readiness_check("db", apps.check_passes)
    with pytest.raises(CheckRegistrationError, match="'db' is already registered"):
        health.add_liveness_check("db", apps.check_passes)
    with pytest.raises(CheckRegistrationError, match="'draining' for name; it is a built-in check"):
        health.add_readiness_check("draining", apps.check_passes)


# -- checks from the configuration ---------------------------------------------------------


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = {"/ok": 200, "/moved": 302}.get(self.path, 500)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


@pytest.fixture
def http_server() -> Iterator[str]:
    """A plain HTTP server on loopback: /ok 200, /moved 302, anything else 500."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(WAIT)


def test_configured_checks_run_and_report(
    run_sidecar: Any, logs: LogWatch, http_server: str
) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_server(("127.0.0.1", 0)) as gone,
    ):
        up, down = listener.getsockname()[1], gone.getsockname()[1]
        gone.close()  # nothing listens there any more: connections are refused
        fast = {"interval": 0.05, "failure_threshold": 1}
        checks = [
            {"name": "tcp-up", "type": "tcp", "host": "127.0.0.1", "port": up, **fast},
            {"name": "tcp-down", "type": "tcp", "host": "127.0.0.1", "port": down, **fast},
            {"name": "http-up", "type": "http", "url": f"{http_server}/ok", **fast},
            {"name": "http-moved", "type": "http", "url": f"{http_server}/moved", **fast},
            {
                "name": "http-down",
                "type": "http",
                "url": f"{http_server}/x",
                **fast,
                "severity": "warning",
                "tags": ["search"],
            },
            {
                "name": "fn-up",
                "type": "callable",
                "target": "tests.apps:check_passes",
                "probe": "liveness",
            },
            {
                "name": "fn-down",
                "type": "callable",
                "target": "tests.apps:check_fails",
                "probe": "liveness",
                "severity": "warning",
                **fast,
            },
        ]
        running = run_sidecar(apps.lifespan_app(), health__checks=checks)
        for name in ("tcp-up", "http-up", "http-moved", "fn-up"):
            logs.wait_for(rf"health check '{name}' \(\w+\) passes")
        for name in ("tcp-down", "http-down", "fn-down"):
            logs.wait_for(rf"health check '{name}' \(\w+\) failed")
        ready = fetch(running.admin("/readyz?verbose"))
        live = fetch(running.admin("/livez?verbose"))
        source = check_document(running, "readyz", "tcp-up")["details"]["source"]
    assert ready.status == 503  # tcp-down is critical
    lines = ready.text.splitlines()
    assert "[+]tcp-up ok" in lines
    assert any(
        line.startswith(f"[-]tcp-down failed: cannot connect to 127.0.0.1:{down}: ")
        for line in lines
    ), ready.text
    assert "[+]http-up ok" in lines
    assert "[+]http-moved ok" in lines  # 3xx passes, as for the kubelet
    assert (
        f"[-]http-down failed: GET {http_server}/x answered 500 (1 failure in a row) "
        "(severity warning: not counted)"
    ) in lines
    assert fetch(running.admin("/readyz?exclude=tcp-down")).status == 200
    assert live.status == 200  # fn-down is a warning
    assert "[+]fn-up ok" in live.text
    assert "[-]fn-down failed: ConnectionError: replica is 30s behind" in live.text
    assert source == f"config: tcp 127.0.0.1:{up}"


def test_a_configured_check_that_cannot_be_imported_fails_startup(run_sidecar: Any) -> None:
    checks = [{"name": "gone", "type": "callable", "target": "tests.no_such_module:check"}]
    running = run_sidecar(apps.lifespan_app(), wait=False, health__checks=checks)
    error = running.wait_finished()
    assert isinstance(error, AppLoadError)
    assert str(error).startswith(
        "cannot load health check 'gone' (health.checks[0].target) "
        "'tests.no_such_module:check': module 'tests.no_such_module' not found"
    )
    registry = running.sidecar.metrics.registry
    assert sample(registry, "sidecar_lifespan_startup_failures_total", reason="import") == 1


def test_check_failed_gives_the_message_alone(run_sidecar: Any, logs: LogWatch) -> None:
    async def replica_lag() -> None:
        raise CheckFailed("replica is 42s behind")

    app = apps.registers(
        lambda health: health.add_readiness_check(
            "replica", replica_lag, interval=0.05, failure_threshold=1
        )
    )
    running = run_sidecar(app)
    logs.wait_for(r"health check 'replica' \(readiness\) failed")
    verbose = fetch(running.admin("/readyz?verbose")).text
    assert "[-]replica failed: replica is 42s behind (1 failure in a row)" in verbose


def test_health_metrics_pass_promtool(run_sidecar: Any, logs: LogWatch) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package 'prometheus'; .ci/run installs it)"
    good, bad = apps.ScriptedCheck(), apps.ScriptedCheck()
    bad.error = "down"

    def register(health: HealthChecks) -> None:
        health.add_readiness_check("good", good.sync, interval=0.02)
        health.add_readiness_check("bad", bad.run, interval=0.02, failure_threshold=1)

    running = run_sidecar(apps.registers(register), health__heartbeat_interval=0.01)
    good.wait_for_call(2)
    bad.wait_for_call(2)
    text = fetch(running.admin("/metrics")).text
    samples = scrape_samples(text)
    assert samples[("sidecar_health_check_status", (("check", "good"),))] == 1
    assert samples[("sidecar_health_check_status", (("check", "bad"),))] == 0
    assert samples[("sidecar_health_check_duration_seconds_count", (("check", "good"),))] >= 1
    assert samples[("sidecar_health_check_failures_total", (("check", "bad"),))] >= 1
    for name in ("current_lag_seconds", "longest_stall_seconds", "lag_seconds_count"):
        assert (f"sidecar_event_loop_{name}", ()) in samples
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == result.stderr.strip() == ""
