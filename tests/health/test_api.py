"""The app's side: registering checks from the lifespan, and what happens to them."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sidecar import (
    STATE_KEY,
    CheckRegistrationError,
    HealthChecks,
    health_checks,
)
from sidecar.health import CheckScheduler
from sidecar.metrics import Metrics

from .. import apps
from ..conftest import LogWatch, fetch

JSON = {"Accept": "application/json"}


def check_document(running: Any, probe: str, name: str) -> dict[str, Any]:
    document = fetch(running.admin(f"/{probe}"), headers=JSON).json()
    return next(c for c in document["checks"] if c["name"] == name)  # type: ignore[no-any-return]


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
