"""The check scheduler: thresholds, timeouts, severities, and probes that never wait."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from typing import Any

import pytest

from sidecar import (
    HealthChecks,
)
from sidecar.health.scheduler import RECENT_RUNS

from .. import apps
from ..conftest import ROOT, WAIT, LogWatch, fetch
from ..metrics_util import sample, scrape_samples

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


def test_each_check_keeps_its_last_runs_and_when_its_state_changed(run_sidecar: Any) -> None:
    check = apps.ScriptedCheck()
    app = apps.registers(
        lambda health: health.add_readiness_check(
            "db", check.sync, interval=0.01, failure_threshold=2
        )
    )
    before = time.time()
    running = run_sidecar(app)
    scheduler = running.sidecar.checks
    check.wait_for_call(3)  # two runs recorded
    history = scheduler.history()["db"]
    assert history.status == "passing"
    assert before <= history.since == history.runs[0].at  # passing since its first run
    assert all(run.ok and run.error is None for run in history.runs)
    assert all(run.duration is not None and run.duration >= 0 for run in history.runs)

    check.error = "connection refused"
    calls = check.calls  # every later call fails
    check.wait_for_call(calls + 3)  # two failures in a row recorded: the threshold
    history = scheduler.history()["db"]
    assert history.status == "failing"
    failures = [run for run in history.runs if not run.ok]
    assert all(run.error == "RuntimeError: connection refused" for run in failures)
    # It turned failing with the second failure in a row, and says since when.
    assert history.since == failures[1].at
    assert [run.at for run in history.runs] == sorted(run.at for run in history.runs)

    check.wait_for_call(calls + RECENT_RUNS + 2)
    assert len(scheduler.history()["db"].runs) == RECENT_RUNS  # a fixed-size buffer
