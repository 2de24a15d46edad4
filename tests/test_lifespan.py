"""Lifespan behaviours, through real sidecars serving on loopback."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from sidecar.config import LifespanConfig
from sidecar.errors import LifespanError, UnexpectedMessageError
from sidecar.lifespan import LifespanDriver
from sidecar.state import Phase

from . import apps
from .conftest import fetch
from .metrics_util import sample


def _failure(running: Any) -> LifespanError:
    error = running.wait_finished()
    assert isinstance(error, LifespanError), error
    return error


def test_startup_complete_serves_state(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app(state={"db": "pool", "cache": "redis"}))
    reply = fetch(running.app("/"))
    assert reply.status == 200
    assert reply.json() == ["cache", "db"]
    assert running.stop() is None
    assert running.phases.phases() == [Phase.READY, Phase.DRAINING, Phase.STOPPING, Phase.STOPPED]


def test_startup_failed_is_a_failure_with_the_apps_message(
    run_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = apps.lifespan_app(on_startup="failed", startup_message="migrations pending")
    running = run_sidecar(app, wait=False)
    error = _failure(running)
    assert error.stage == "startup"
    assert error.reason == "failed"
    assert "migrations pending" in str(error)
    assert "migrations pending" in caplog.text
    assert running.sidecar.app_server is None  # the app port was never bound
    registry = running.sidecar.metrics.registry
    assert sample(registry, "sidecar_lifespan_startup_failures_total", reason="failed") == 1
    assert sample(registry, "sidecar_lifecycle_phase", phase="failed") == 1


def test_startup_exception_after_receiving_startup_is_a_failure_in_auto_mode(
    run_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    running = run_sidecar(apps.lifespan_app(on_startup="raise"), wait=False)
    error = _failure(running)
    assert error.reason == "exception"
    assert "database is unreachable" in str(error)
    # the traceback reaches the log, not just the message
    assert "Traceback" in caplog.text
    assert "RuntimeError: database is unreachable" in caplog.text
    registry = running.sidecar.metrics.registry
    assert sample(registry, "sidecar_lifespan_startup_failures_total", reason="exception") == 1


def test_unsupported_lifespan_in_auto_mode_serves_anyway(
    run_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    running = run_sidecar(apps.http_only)
    assert fetch(running.app("/")).text == "ok"
    assert "does not support the ASGI lifespan protocol" in caplog.text
    assert caplog.text.count("does not support") == 1
    assert running.stop() is None


def test_unsupported_lifespan_in_on_mode_is_a_failure(run_sidecar: Any) -> None:
    running = run_sidecar(apps.http_only, wait=False, lifespan__mode="on")
    error = _failure(running)
    assert error.reason == "exception"
    assert "before receiving lifespan.startup" in str(error)


def test_returning_before_startup_is_unsupported_in_auto_and_a_failure_in_on(
    run_sidecar: Any,
) -> None:
    async def returns(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await apps.respond(send)

    running = run_sidecar(returns)
    assert fetch(running.app("/")).status == 200
    assert running.stop() is None

    running = run_sidecar(returns, wait=False, lifespan__mode="on")
    assert _failure(running).reason == "failed"


def test_off_mode_never_calls_lifespan(run_sidecar: Any) -> None:
    recorder = apps.Recorder()

    async def no_state(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await recorder(scope, receive, send)
            return
        await apps.respond(send, body=repr(scope["state"]).encode())

    running = run_sidecar(no_state, lifespan__mode="off")
    assert fetch(running.app("/")).text == "{}"
    assert running.stop() is None
    assert recorder.lifespan_calls == 0


def test_startup_that_hangs_past_the_timeout_fails_with_reason_timeout(run_sidecar: Any) -> None:
    running = run_sidecar(
        apps.lifespan_app(on_startup="hang"), wait=False, lifespan__startup_timeout=0.3
    )
    error = _failure(running)
    assert error.reason == "timeout"
    assert "0.3s" in str(error)
    registry = running.sidecar.metrics.registry
    assert sample(registry, "sidecar_lifespan_startup_failures_total", reason="timeout") == 1
    assert sample(registry, "sidecar_lifespan_startup_duration_seconds") >= 0.3


def test_lifespan_that_returns_right_after_startup_is_fine(run_sidecar: Any) -> None:
    running = run_sidecar(apps.returns_after_startup)
    assert fetch(running.app("/")).text == "42"
    assert running.stop() is None
    registry = running.sidecar.metrics.registry
    for reason in ("failed", "exception", "timeout"):
        assert sample(registry, "sidecar_lifespan_shutdown_failures_total", reason=reason) == 0
    assert running.phases.phases()[-1] is Phase.STOPPED


@pytest.mark.parametrize(
    ("on_shutdown", "reason"), [("failed", "failed"), ("raise", "exception"), ("hang", "timeout")]
)
def test_shutdown_failures_are_counted_and_the_process_still_stops(
    run_sidecar: Any, on_shutdown: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    running = run_sidecar(
        apps.lifespan_app(on_shutdown=on_shutdown), lifespan__shutdown_timeout=0.3
    )
    assert running.stop() is None
    registry = running.sidecar.metrics.registry
    assert sample(registry, "sidecar_lifespan_shutdown_failures_total", reason=reason) == 1
    assert running.phases.phases()[-1] is Phase.STOPPED
    assert "lifespan shutdown failed" in caplog.text
    if on_shutdown == "hang":
        assert sample(registry, "sidecar_lifespan_shutdown_duration_seconds") >= 0.3


def test_each_request_gets_a_shallow_copy_of_the_state(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder)
    first = fetch(running.app("/mutate-state")).json()
    second = fetch(running.app("/read")).json()
    # A key added by one request is not seen by the next...
    assert "added_by_request" in first["state_keys"]
    assert second["state_keys"] == ["name", "shared"]
    # ...but objects created in the lifespan are shared (it is a shallow copy).
    assert second["hits"] == 1


def test_startup_is_retried_with_backoff_until_it_succeeds(run_sidecar: Any) -> None:
    app = apps.FlakyStartup(failures=2)
    running = run_sidecar(
        app,
        lifespan__startup_attempts=3,
        lifespan__retry_backoff=0.01,
        lifespan__retry_backoff_max=0.02,
    )
    assert fetch(running.app("/")).status == 200
    assert app.attempts == 3
    registry = running.sidecar.metrics.registry
    assert sample(registry, "sidecar_lifespan_startup_failures_total", reason="failed") == 2


def test_startup_gives_up_after_the_last_attempt(run_sidecar: Any) -> None:
    app = apps.FlakyStartup(failures=5)
    running = run_sidecar(
        app, wait=False, lifespan__startup_attempts=2, lifespan__retry_backoff=0.01
    )
    assert _failure(running).reason == "failed"
    assert app.attempts == 2


def test_a_lifespan_task_that_dies_after_startup_fails_liveness(run_sidecar: Any) -> None:
    app = apps.CrashAfterStartup()
    running = run_sidecar(app)
    assert fetch(running.admin("/livez")).status == 200
    app.trigger()
    assert app.crashed.wait(30)
    running.sync()  # the crash is recorded in the same loop step that raised it
    registry = running.sidecar.metrics.registry
    assert sample(registry, "sidecar_lifespan_crashes_total") == 1
    reply = fetch(running.admin("/livez?verbose"))
    assert reply.status == 503
    assert "[-]lifespan failed: lifespan task crashed: RuntimeError: background refresher died" in (
        reply.text
    )
    # still serving: the kubelet decides when to restart
    assert fetch(running.app("/")).status == 200


def test_out_of_order_message_is_a_named_error(run_sidecar: Any) -> None:
    running = run_sidecar(apps.out_of_order, wait=False)
    error = _failure(running)
    assert error.reason == "exception"
    assert "UnexpectedMessageError" in str(error)
    assert "lifespan.startup.complete" in str(error)


def test_driver_rejects_unknown_message_types() -> None:
    async def main() -> BaseException | None:
        captured: list[BaseException] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            try:
                await send({"type": "lifespan.startup.bogus"})
            except UnexpectedMessageError as exc:
                captured.append(exc)
                raise

        driver = LifespanDriver(LifespanConfig(mode="on"), app)
        with pytest.raises(LifespanError):
            await driver.startup()
        return captured[0] if captured else None

    error = asyncio.run(main())
    assert isinstance(error, UnexpectedMessageError)
    assert error.expected == ("lifespan.startup.complete", "lifespan.startup.failed")


def test_lifespan_scope_fields(run_sidecar: Any) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            seen.append(dict(scope))
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await apps.respond(send)

    running = run_sidecar(app)
    assert running.stop() is None
    (scope,) = seen
    assert set(scope) == {"type", "asgi", "state"}
    assert scope["type"] == "lifespan"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.0"}
    assert isinstance(scope["state"], dict)
