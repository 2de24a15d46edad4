"""Probes in each phase, the preStop drain and the admin thread's independence."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sidecar import HealthChecks
from sidecar.state import Phase

from . import apps
from .conftest import LogWatch, fetch


def probes(running: Any) -> dict[str, int]:
    return {path: fetch(running.admin(path)).status for path in ("/livez", "/readyz", "/startupz")}


def test_probes_while_starting(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app(on_startup="hang"), wait=False)
    assert probes(running) == {"/livez": 200, "/readyz": 503, "/startupz": 503}
    verbose = fetch(running.admin("/startupz?verbose")).text
    assert "[+]ping ok" in verbose
    assert "[-]startup failed: startup in progress for" in verbose
    assert verbose.endswith("startupz check failed\n")


def test_probes_when_ready(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    assert probes(running) == {"/livez": 200, "/readyz": 200, "/startupz": 200}
    reply = fetch(running.admin("/readyz"))
    assert reply.text == "ok"
    assert reply.headers["cache-control"] == "no-store"
    assert fetch(running.admin("/readyz?verbose")).text == (
        "[+]ping ok\n[+]startup ok\n[+]draining ok\n[+]event-loop ok\nreadyz check passed\n"
    )


def test_probes_answer_head_without_a_body(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    reply = fetch(running.admin("/readyz"), "HEAD")
    assert reply.status == 200
    assert reply.body == b""


def test_probe_json(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app(on_startup="hang"), wait=False)
    reply = fetch(running.admin("/readyz"), headers={"Accept": "application/json"})
    assert reply.status == 503
    assert reply.headers["content-type"].startswith("application/json")
    document = reply.json()
    assert document["status"] == "failed"
    names = {check["name"]: check["ok"] for check in document["checks"]}
    assert names == {"ping": True, "startup": False, "draining": True, "event-loop": True}


def test_probes_between_startup_attempts_show_the_last_failure(run_sidecar: Any) -> None:
    app = apps.FlakyStartup(failures=1, then_hang=True)
    running = run_sidecar(
        app, wait=False, lifespan__startup_attempts=2, lifespan__retry_backoff=0.01
    )
    assert app.recovering.wait(30)  # the first failure has been recorded by now
    reply = fetch(running.admin("/startupz?verbose"))
    assert reply.status == 503
    assert "last attempt failed: the app reported lifespan.startup.failed: try 1" in reply.text
    assert fetch(running.admin("/livez")).status == 200


class ManualClock:
    """The drain clock of a test: it moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_prestop_marks_not_ready_at_once_and_keeps_serving(
    run_sidecar: Any, logs: LogWatch
) -> None:
    running = run_sidecar(apps.lifespan_app(), shutdown__drain_delay=1.0)
    replies: list[Any] = []
    caller = threading.Thread(target=lambda: replies.append(fetch(running.admin("/prestop"))))
    caller.start()
    running.phases.wait_for(Phase.DRAINING)
    during = probes(running)
    served = fetch(running.app("/")).status
    caller.join(30)
    assert during == {"/livez": 200, "/readyz": 503, "/startupz": 200}
    assert served == 200  # the app keeps serving during the drain
    assert replies[0].status == 200
    assert logs.messages(r"preStop from .*: draining for 1\.0s before SIGTERM")
    verbose = fetch(running.admin("/readyz?verbose")).text
    assert "[-]draining failed: draining for" in verbose
    # SIGTERM after preStop does not wait the drain delay again.
    assert running.stop() is None
    assert not logs.messages("serving for .* more before closing the listener")


def test_concurrent_prestop_calls_share_one_drain(run_sidecar: Any, logs: LogWatch) -> None:
    clock = ManualClock()
    running = run_sidecar(apps.lifespan_app(), shutdown__drain_delay=1.5, clock=clock)
    replies: list[int] = []

    def call() -> None:
        replies.append(fetch(running.admin("/prestop")).status)

    first = threading.Thread(target=call)
    first.start()
    running.phases.wait_for(Phase.DRAINING)
    logs.wait_for(r"draining for 1\.5s before SIGTERM")
    clock.now += 1.4  # well into the drain: the second call waits only for what is left
    second = threading.Thread(target=call)
    second.start()
    logs.wait_for(r"draining for 0\.1s before SIGTERM")
    first.join(30)
    second.join(30)
    assert replies == [200, 200]
    assert len([p for p in running.phases.phases() if p is Phase.DRAINING]) == 1
    clock.now += 1.0  # the drain is over: the stop at teardown has nothing left to wait


def test_prestop_accepts_post(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    assert fetch(running.admin("/prestop"), "POST").status == 200
    assert fetch(running.admin("/readyz")).status == 503


def test_unknown_admin_path_is_404(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    assert fetch(running.admin("/nope")).status == 404


def test_admin_answers_while_the_app_loop_is_blocked(run_sidecar: Any) -> None:
    release = threading.Event()
    entered = threading.Event()

    async def blocking(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("no lifespan")
        entered.set()
        release.wait(30)  # a blocking call in an async handler: the loop is stuck
        await apps.respond(send)

    running = run_sidecar(blocking)
    stuck = threading.Thread(target=fetch, args=(running.app("/"),))
    stuck.start()
    assert entered.wait(30)
    try:
        assert fetch(running.admin("/livez"), timeout=2).status == 200
        assert fetch(running.admin("/metrics"), timeout=2).status == 200
    finally:
        release.set()
        stuck.join(30)


def test_stopping_phase_fails_readiness_while_requests_finish(run_sidecar: Any) -> None:
    app = apps.SlowRequests()
    running = run_sidecar(app, shutdown__drain_mode="fixed")
    slow = threading.Thread(target=fetch, args=(running.app("/slow"),))
    slow.start()
    assert app.entered.wait(30)
    running.sidecar.request_shutdown()
    running.phases.wait_for(Phase.STOPPING)
    assert probes(running) == {"/livez": 200, "/readyz": 503, "/startupz": 200}
    assert "shutting down (phase stopping)" in fetch(running.admin("/readyz?verbose")).text
    app.release()
    slow.join(30)
    assert running.wait_finished() is None


@pytest.mark.parametrize(
    "path", ["/livez", "/readyz", "/startupz", "/healthz", "/readyz/ping", "/metrics"]
)
def test_admin_endpoints_reject_post(run_sidecar: Any, path: str) -> None:
    running = run_sidecar(apps.lifespan_app())
    assert fetch(running.admin(path), "POST").status == 405


def test_prestop_during_startup_answers_at_once_and_never_reports_ready(
    run_sidecar: Any, logs: LogWatch
) -> None:
    running = run_sidecar(
        apps.lifespan_app(on_startup="hang"), wait=False, shutdown__drain_delay=30
    )
    # Nothing is routed here yet: no drain to wait for (the call would take 30 s).
    assert fetch(running.admin("/prestop"), timeout=10).status == 200
    assert not logs.messages("draining for")
    assert fetch(running.admin("/readyz")).status == 503
    assert running.stop() is None
    assert Phase.READY not in running.phases.phases()


# -- the kube-apiserver probe surface: one check, exclude, /healthz ------------------------


def _with_a_failing_db(run_sidecar: Any, logs: LogWatch) -> Any:
    """A sidecar whose readiness has a failing critical ``db`` and a passing ``queue``,
    both tagged ``external``."""
    db, queue = apps.ScriptedCheck(), apps.ScriptedCheck()
    db.error = "connection refused"

    def register(health: HealthChecks) -> None:
        health.add_readiness_check(
            "db", db.sync, interval=0.05, failure_threshold=1, tags=["external"]
        )
        health.add_readiness_check("queue", queue.sync, interval=0.05, tags=["external"])

    running = run_sidecar(apps.registers(register))
    logs.wait_for(r"health check 'db' \(readiness\) failed")
    logs.wait_for(r"health check 'queue' \(readiness\) passes")
    return running


def test_a_single_check_by_path(run_sidecar: Any, logs: LogWatch) -> None:
    running = _with_a_failing_db(run_sidecar, logs)
    reply = fetch(running.admin("/readyz/db"))
    assert (reply.status, reply.text) == (503, "readyz check failed: db")
    assert fetch(running.admin("/readyz/db?verbose")).text == (
        "[-]db failed: RuntimeError: connection refused (1 failure in a row)\nreadyz check failed\n"
    )
    assert (fetch(running.admin("/readyz/queue")).status, "ok") == (200, "ok")
    for path in ("/readyz/ping", "/readyz/event-loop", "/livez/lifespan", "/startupz/startup"):
        reply = fetch(running.admin(path))
        assert (reply.status, reply.text) == (200, "ok"), path
    document = fetch(running.admin("/readyz/db"), headers={"Accept": "application/json"}).json()
    assert document["status"] == "failed"
    assert [c["name"] for c in document["checks"]] == ["db"]
    head = fetch(running.admin("/readyz/db"), "HEAD")
    assert (head.status, head.body) == (503, b"")


def test_an_unknown_check_path_is_404_and_lists_the_checks(
    run_sidecar: Any, logs: LogWatch
) -> None:
    running = _with_a_failing_db(run_sidecar, logs)
    reply = fetch(running.admin("/readyz/nope"))
    assert reply.status == 404
    assert reply.text == (
        "no readyz check named 'nope'; readyz checks: ping, startup, draining, event-loop, "
        "db, queue\n"
    )
    assert fetch(running.admin("/livez/db")).status == 404  # db is a readiness check


def test_exclude_by_name_tag_and_list(run_sidecar: Any, logs: LogWatch) -> None:
    running = _with_a_failing_db(run_sidecar, logs)
    assert fetch(running.admin("/readyz")).status == 503
    assert fetch(running.admin("/readyz?exclude=db")).status == 200
    verbose = fetch(running.admin("/readyz?exclude=tag:external&verbose")).text
    assert "db" not in verbose
    assert "queue" not in verbose
    assert verbose.endswith("readyz check passed\n")
    # repeated, and comma-separated
    assert fetch(running.admin("/readyz?exclude=db&exclude=queue")).status == 200
    assert fetch(running.admin("/readyz?exclude=db,draining")).status == 200
    # an exclusion that matches nothing is reported, kube-apiserver style
    reply = fetch(running.admin("/readyz?exclude=db&exclude=nope&exclude=tag:none&verbose"))
    assert reply.status == 200
    assert reply.text.splitlines()[-2:] == [
        'warn: some health checks cannot be excluded: no matches for "nope", "tag:none"',
        "readyz check passed",
    ]
    document = fetch(
        running.admin("/readyz?exclude=nope"), headers={"Accept": "application/json"}
    ).json()
    assert document["warnings"] == [
        'warn: some health checks cannot be excluded: no matches for "nope"'
    ]


def test_exclude_makes_a_draining_pod_look_ready_to_a_caller_who_asks(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    assert fetch(running.admin("/prestop"), "POST").status == 200
    assert fetch(running.admin("/readyz")).status == 503
    assert fetch(running.admin("/readyz?exclude=draining")).status == 200
    assert fetch(running.admin("/readyz/draining")).status == 503


def test_healthz_is_a_deprecated_alias_of_livez(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    healthz, livez = fetch(running.admin("/healthz")), fetch(running.admin("/livez"))
    assert (healthz.status, healthz.text) == (livez.status, livez.text) == (200, "ok")
    assert "deprecated" in healthz.headers["warning"]
    assert "warning" not in livez.headers
    assert fetch(running.admin("/healthz?verbose")).text == (
        "[+]ping ok\n[+]lifespan ok\n[+]event-loop ok\nhealthz check passed\n"
    )
    assert fetch(running.admin("/healthz/lifespan")).status == 200
    assert fetch(running.admin("/healthz/startup")).status == 404  # not a liveness check
    as_json = {"Accept": "application/json"}
    names = [c["name"] for c in fetch(running.admin("/healthz"), headers=as_json).json()["checks"]]
    assert names == ["ping", "lifespan", "event-loop"]


def test_probe_json_carries_each_checks_details(run_sidecar: Any, logs: LogWatch) -> None:
    running = _with_a_failing_db(run_sidecar, logs)
    document = fetch(running.admin("/readyz"), headers={"Accept": "application/json"}).json()
    checks = {c["name"]: c for c in document["checks"]}
    assert document["status"] == "failed"
    assert checks["ping"] == {"name": "ping", "ok": True, "message": "ok", "critical": True}
    loop = checks["event-loop"]["details"]
    assert set(loop) == {"lag_s", "max_lag_s", "longest_recent_stall_s", "heartbeat_interval_s"}
    assert loop["max_lag_s"] == 1.0
    db = checks["db"]
    assert db["tags"] == ["external"]
    assert db["message"] == "RuntimeError: connection refused (1 failure in a row)"
    assert set(db["details"]) == {
        "probe", "severity", "source", "status", "last_result", "last_error",
        "last_duration_s", "last_run_s_ago", "consecutive_failures", "failure_threshold",
        "runs", "timeout_s", "interval_s",
    }  # fmt: skip
    assert db["details"]["last_duration_s"] >= 0
