"""Health checks: registered by the app or configured, run in the background, read by probes.

A probe never waits on a check. Each check runs on its own schedule and stores its last
result; ``/readyz`` and ``/livez`` read the stored results, so they answer in
microseconds however slow or hung a dependency is.

Where a check runs:

- an ``async`` check from the app (registered, or a configured ``callable``) runs on the
  app's event loop: it uses objects bound to that loop (connection pools, clients made
  in the lifespan), which another loop cannot use. Its timeout is enforced from the
  admin thread, so a blocked app loop shows as a timed-out check, never a slow probe;
- a sync check runs in a daemon thread of its own, so a call that hangs blocks neither
  loop nor the process's exit (a pool's worker threads would be joined at exit);
- the configured ``tcp`` and ``http`` checks are the sidecar's own code and run on the
  admin loop: they need nothing from the app and keep measuring the dependency while
  the app's loop is busy (the ``event-loop`` check reports that separately).

The admin loop never runs app code, so nothing the app does can delay a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Literal, get_args

import aiohttp

from .config import (
    BUILTIN_CHECKS,
    CHECK_FAILURE_THRESHOLD,
    CHECK_INTERVAL,
    CHECK_NAME,
    CHECK_NAME_FORM,
    CHECK_TIMEOUT,
    HealthCheckConfig,
    HealthConfig,
)
from .errors import CheckFailed, CheckRegistrationError
from .loop_monitor import LoopMonitor
from .metrics import Metrics
from .state import Check, Lifecycle

logger = logging.getLogger("sidecar.health")

#: The key of the ``HealthChecks`` object in the lifespan scope's ``state``.
STATE_KEY = "sidecar.health"

ProbeName = Literal["readiness", "liveness"]
Severity = Literal["critical", "warning"]
RunsOn = Literal["app-loop", "admin-loop", "thread"]
CheckFunction = Callable[[], Any]

_SEVERITIES: tuple[str, ...] = get_args(Severity)


@dataclass(frozen=True)
class CheckDefinition:
    """What to run, where, how often, and how a result counts."""

    name: str
    probe: ProbeName
    run: CheckFunction
    runs_on: RunsOn
    timeout: float
    interval: float
    failure_threshold: int
    severity: Severity
    tags: tuple[str, ...]
    source: str  # "app", or "config: tcp db:5432" and the like


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    error: str | None = None


def _judge(result: object) -> _Outcome:
    if result is False:
        return _Outcome(False, "the check returned False")
    return _Outcome(True)


def _failure(exc: BaseException) -> _Outcome:
    if isinstance(exc, CheckFailed):
        return _Outcome(False, str(exc))
    text = str(exc)
    return _Outcome(False, f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def is_async_callable(function: Callable[..., Any]) -> bool:
    """Tell whether calling ``function`` gives a coroutine (also for partials and objects)."""
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


async def _call_async(function: CheckFunction, deliver: Callable[[_Outcome], None]) -> None:
    outcome = _Outcome(False, "the check ended abnormally")
    try:
        outcome = _judge(await function())
    except asyncio.CancelledError:
        outcome = _CANCELLED
        raise
    except Exception as exc:
        outcome = _failure(exc)
    finally:
        deliver(outcome)


def _call_sync(function: CheckFunction, deliver: Callable[[_Outcome], None]) -> None:
    outcome = _Outcome(False, "the check ended abnormally")
    try:
        result = function()
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited; closing it avoids a RuntimeWarning
            outcome = _Outcome(
                False, "the check returned an awaitable; make it an `async def` function"
            )
        else:
            outcome = _judge(result)
    except Exception as exc:
        outcome = _failure(exc)
    finally:
        deliver(outcome)


_CANCELLED = _Outcome(False, "cancelled")


class _AppLoopRun:
    """One run of an async check on the app's loop, cancellable from the admin thread.

    A task cancelled before its first step never enters the coroutine, so the check's
    own ``finally`` cannot report the end; the task's done callback does. That matters
    when the app loop was blocked past the timeout: without it the run would count as
    still running forever.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        function: CheckFunction,
        deliver: Callable[[_Outcome], None],
    ) -> None:
        self._loop = loop
        self._function = function
        self._deliver = deliver
        self._task: asyncio.Task[None] | None = None
        self._cancelled = False

    def start(self) -> None:  # on the app loop
        if self._cancelled:
            self._deliver(_Outcome(False, "cancelled before it started"))
            return
        self._task = self._loop.create_task(_call_async(self._function, self._deliver))
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self._deliver(_CANCELLED)

    def cancel(self) -> None:  # from the admin thread
        with contextlib.suppress(RuntimeError):  # the app loop closed: nothing to cancel
            self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:  # on the app loop, after start() if that was queued first
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()


def _settle(done: asyncio.Future[_Outcome], outcome: _Outcome) -> None:
    if not done.done():
        done.set_result(outcome)


def _failures(count: int) -> str:
    return "1 failure" if count == 1 else f"{count} failures"


def _nothing() -> None:
    return None


class _Entry:
    """A check's schedule and results; mutated only on the admin loop."""

    def __init__(self, definition: CheckDefinition) -> None:
        self.definition = definition
        self.task: asyncio.Task[None] | None = None
        self.retired = False
        self.runs = 0
        self.last_ok: bool | None = None
        self.last_error: str | None = None
        self.last_duration: float | None = None
        self.last_run_at: float | None = None
        self.consecutive_failures = 0
        self.ever_passed = False
        self.in_flight: asyncio.Future[_Outcome] | None = None
        self.in_flight_since = 0.0
        self.cancel_run: Callable[[], object] = _nothing

    @property
    def passing(self) -> bool:
        """Whether the check counts as passing now.

        Like the kubelet's own probes: a readiness check starts failed and passes from
        its first success; a liveness check starts passing. Either fails once it failed
        ``failure_threshold`` runs in a row, and passes again at the next success.
        """
        definition = self.definition
        if self.consecutive_failures >= definition.failure_threshold:
            return False
        return definition.probe == "liveness" or self.ever_passed


class CheckScheduler:
    """Run every check on its schedule in the background; keep the last results.

    Checks are added and removed from any thread; the schedule runs on the admin loop
    (``run()`` is one of the admin server's background tasks).
    """

    def __init__(self, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._admin_loop: asyncio.AbstractEventLoop | None = None
        self._app_loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    def attach_app_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell the scheduler which loop runs the app's async checks."""
        self._app_loop = loop

    # -- registration (any thread) ------------------------------------------------------

    def add(self, definition: CheckDefinition) -> None:
        """Schedule a check; raise ``CheckRegistrationError`` if its name is taken."""
        entry = _Entry(definition)
        with self._lock:
            if self._stopped:
                raise CheckRegistrationError(
                    f"cannot add health check {definition.name!r}: the sidecar is shutting down"
                )
            existing = self._entries.get(definition.name)
            if existing is not None:
                raise CheckRegistrationError(
                    f"a health check named {definition.name!r} is already registered "
                    f"({existing.definition.probe}, {existing.definition.source}); "
                    "names are unique across readiness and liveness"
                )
            self._entries[definition.name] = entry
            loop = self._admin_loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the admin loop closed in between
                loop.call_soon_threadsafe(self._start, entry)

    def remove(self, name: str) -> bool:
        """Stop and forget a check; return whether it existed."""
        with self._lock:
            entry = self._entries.pop(name, None)
            loop = self._admin_loop
        if entry is None:
            return False
        if loop is None:
            entry.retired = True
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._retire, entry)
        return True

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    # -- the schedule (admin loop) ------------------------------------------------------

    async def run(self) -> None:
        """Run the checks until cancelled (the admin server runs this on its loop)."""
        with self._lock:
            self._admin_loop = asyncio.get_running_loop()
            entries = list(self._entries.values())
        for entry in entries:
            self._start(entry)
        try:
            await asyncio.Event().wait()
        finally:
            self._halt()

    async def stop(self) -> None:
        """Stop every check; call from the app loop before the lifespan shutdown.

        The app is about to close what its checks use (pools, clients); a check running
        into a closed pool would report a failure that is not one.
        """
        with self._lock:
            self._stopped = True
            loop = self._admin_loop
        if loop is None or loop.is_closed():
            return
        try:
            done = asyncio.run_coroutine_threadsafe(self._halt_soon(), loop)
        except RuntimeError:  # the admin loop closed in between
            return
        # Bounded: a wedged admin thread must not hold up the lifespan shutdown.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(done), 5.0)

    async def _halt_soon(self) -> None:
        self._halt()

    def _halt(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            self._retire(entry)

    def _start(self, entry: _Entry) -> None:
        if entry.retired or entry.task is not None:
            return
        self._metrics.check_status.labels(entry.definition.name).set(1 if entry.passing else 0)
        entry.task = asyncio.get_running_loop().create_task(
            self._schedule(entry), name=f"sidecar-check-{entry.definition.name}"
        )

    def _retire(self, entry: _Entry) -> None:
        entry.retired = True
        if entry.task is not None:
            entry.task.cancel()
        entry.cancel_run()
        with self._lock:
            removed = entry.definition.name not in self._entries
        if removed:
            self._metrics.forget_check(entry.definition.name)

    async def _schedule(self, entry: _Entry) -> None:
        interval = entry.definition.interval
        while not entry.retired:
            try:
                await self._run_once(entry)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the schedule silently
                logger.exception("health check %r: the scheduler failed", entry.definition.name)
            await asyncio.sleep(interval)

    async def _run_once(self, entry: _Entry) -> None:
        definition = entry.definition
        now = self._clock()
        previous = entry.in_flight
        if previous is not None and not previous.done():
            # A sync call cannot be interrupted and an async one may ignore cancellation:
            # rather than pile up calls, this run fails until the previous one ends.
            self._record(
                entry,
                False,
                None,  # nothing ran: no duration to record
                f"the run started {now - entry.in_flight_since:.1f}s ago has not "
                f"finished (timeout {definition.timeout:g}s)",
            )
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_Outcome] = loop.create_future()
        entry.in_flight, entry.in_flight_since = done, now
        entry.cancel_run = self._launch(definition, done)
        finished, _ = await asyncio.wait({done}, timeout=definition.timeout)
        if not finished:
            entry.cancel_run()
            self._record(
                entry, False, definition.timeout, f"timed out after {definition.timeout:g}s"
            )
            return
        outcome = done.result()
        self._record(entry, outcome.ok, self._clock() - now, outcome.error)

    def _launch(
        self, definition: CheckDefinition, done: asyncio.Future[_Outcome]
    ) -> Callable[[], object]:
        """Start one run; return what cancels it (a thread cannot be cancelled)."""
        admin = asyncio.get_running_loop()

        def deliver(outcome: _Outcome) -> None:  # from any thread
            with contextlib.suppress(RuntimeError):  # the admin loop closed: we stopped
                admin.call_soon_threadsafe(_settle, done, outcome)

        if definition.runs_on == "thread":
            threading.Thread(
                target=_call_sync,
                args=(definition.run, deliver),
                name=f"sidecar-check-{definition.name}",
                daemon=True,
            ).start()
            return _nothing
        if definition.runs_on == "admin-loop":
            task = admin.create_task(_call_async(definition.run, lambda o: _settle(done, o)))
            task.add_done_callback(lambda t: _settle(done, _CANCELLED) if t.cancelled() else None)
            return task.cancel
        app = self._app_loop
        if app is None or app.is_closed():
            _settle(done, _Outcome(False, "the app's event loop is not running"))
            return _nothing
        run = _AppLoopRun(app, definition.run, deliver)
        try:
            app.call_soon_threadsafe(run.start)
        except RuntimeError:  # the app loop closed in between
            _settle(done, _Outcome(False, "the app's event loop is not running"))
            return _nothing
        return run.cancel

    def _record(self, entry: _Entry, ok: bool, duration: float | None, error: str | None) -> None:
        if entry.retired:
            return
        definition, metrics = entry.definition, self._metrics
        was_passing, had_result = entry.passing, entry.last_ok is not None
        entry.runs += 1
        entry.last_ok = ok
        entry.last_run_at = self._clock()
        if duration is not None:
            entry.last_duration = duration
            metrics.check_duration.labels(definition.name).observe(duration)
        if ok:
            entry.consecutive_failures = 0
            entry.ever_passed = True
        else:
            entry.consecutive_failures += 1
            entry.last_error = error
            metrics.check_failures.labels(definition.name).inc()
        passing = entry.passing
        metrics.check_status.labels(definition.name).set(1 if passing else 0)
        if passing == was_passing and had_result:
            if not ok:
                logger.debug(
                    "health check %r failed (%d/%d): %s",
                    definition.name,
                    entry.consecutive_failures,
                    definition.failure_threshold,
                    error,
                )
            return
        if passing:
            logger.log(
                logging.INFO if had_result else logging.DEBUG,
                "health check %r (%s) passes",
                definition.name,
                definition.probe,
                extra={"event": "check_passing", "check": definition.name},
            )
        elif not ok:
            logger.warning(
                "health check %r (%s) failed: %s (%s in a row)",
                definition.name,
                definition.probe,
                error,
                _failures(entry.consecutive_failures),
                extra={"event": "check_failed", "check": definition.name},
            )

    # -- results (admin loop) -----------------------------------------------------------

    def results(self, probe: ProbeName) -> list[Check]:
        """The checks of ``probe`` as probe lines, in registration order."""
        with self._lock:
            entries = [e for e in self._entries.values() if e.definition.probe == probe]
        now = self._clock()
        return [self._as_check(entry, now) for entry in entries]

    @staticmethod
    def _as_check(entry: _Entry, now: float) -> Check:
        definition = entry.definition
        passing = entry.passing
        if passing:
            message = "ok"
        elif entry.last_ok is None:
            message = "no result yet: the first run has not finished"
        elif not entry.ever_passed and entry.consecutive_failures < definition.failure_threshold:
            message = f"has not passed yet: {entry.last_error}"
        else:
            message = f"{entry.last_error} ({_failures(entry.consecutive_failures)} in a row)"
        status = "passing" if passing else ("pending" if entry.last_ok is None else "failing")
        details: dict[str, Any] = {
            "probe": definition.probe,
            "severity": definition.severity,
            "source": definition.source,
            "status": status,
            "last_result": None if entry.last_ok is None else ("ok" if entry.last_ok else "failed"),
            "last_error": entry.last_error,
            "last_duration_s": None
            if entry.last_duration is None
            else round(entry.last_duration, 6),
            "last_run_s_ago": None
            if entry.last_run_at is None
            else round(now - entry.last_run_at, 3),
            "consecutive_failures": entry.consecutive_failures,
            "failure_threshold": definition.failure_threshold,
            "runs": entry.runs,
            "timeout_s": definition.timeout,
            "interval_s": definition.interval,
        }
        return Check(
            definition.name,
            passing,
            message,
            critical=definition.severity == "critical",
            tags=definition.tags,
            details=details,
        )


# -- the app's side --------------------------------------------------------------------


class HealthChecks:
    """Register the app's health checks with the sidecar.

    The sidecar puts one in the lifespan state, ``scope["state"]["sidecar.health"]``;
    ``health_checks()`` returns the same object where the lifespan state cannot be
    reached (Starlette's and FastAPI's lifespan functions). A check is a function with
    no arguments, sync or ``async def``: it fails when it raises (the exception is the
    reason; raise ``CheckFailed`` for a message without the type name), returns
    ``False`` or takes longer than ``timeout``; anything else passes.
    """

    def __init__(self, scheduler: CheckScheduler) -> None:
        self._scheduler = scheduler
        self._names: list[str] = []
        self._closed = False

    def add_readiness_check(
        self,
        name: str,
        check: CheckFunction,
        *,
        timeout: float = CHECK_TIMEOUT,
        interval: float = CHECK_INTERVAL,
        failure_threshold: int = CHECK_FAILURE_THRESHOLD,
        severity: Severity = "critical",
        tags: Iterable[str] = (),
    ) -> None:
        """Add a check to ``/readyz``: should traffic be routed here now?"""
        self._add("readiness", name, check, timeout, interval, failure_threshold, severity, tags)

    def add_liveness_check(
        self,
        name: str,
        check: CheckFunction,
        *,
        timeout: float = CHECK_TIMEOUT,
        interval: float = CHECK_INTERVAL,
        failure_threshold: int = CHECK_FAILURE_THRESHOLD,
        severity: Severity = "critical",
        tags: Iterable[str] = (),
    ) -> None:
        """Add a check to ``/livez``: is this process stuck so that a restart helps?"""
        self._add("liveness", name, check, timeout, interval, failure_threshold, severity, tags)

    def remove_check(self, name: str) -> None:
        """Stop and remove a check this object added; unknown names are ignored."""
        if name in self._names:
            self._names.remove(name)
            self._scheduler.remove(name)

    def close(self) -> None:
        """Remove every check added through this object and refuse new ones.

        The sidecar calls this when the lifespan startup attempt that registered them
        failed: its checks would probe resources that attempt never finished setting up.
        """
        self._closed = True
        for name in self._names:
            self._scheduler.remove(name)
        self._names.clear()

    def _add(
        self,
        probe: ProbeName,
        name: str,
        check: CheckFunction,
        timeout: float,
        interval: float,
        failure_threshold: int,
        severity: Severity,
        tags: Iterable[str],
    ) -> None:
        if self._closed:
            raise CheckRegistrationError(
                f"cannot add health check {name!r}: this startup attempt has ended"
            )
        tag_tuple = tuple(tags) if not isinstance(tags, str) else (tags,)
        definition = CheckDefinition(
            name=name,
            probe=probe,
            run=check,
            runs_on="app-loop" if is_async_callable(check) else "thread",
            timeout=timeout,
            interval=interval,
            failure_threshold=failure_threshold,
            severity=severity,
            tags=tag_tuple,
            source="app",
        )
        validate(definition)
        self._scheduler.add(definition)
        self._names.append(name)


def validate(definition: CheckDefinition) -> None:
    """Raise ``CheckRegistrationError`` naming every bad setting of a check."""
    problems = []
    name = definition.name
    if not isinstance(name, str) or not CHECK_NAME.fullmatch(name):
        problems.append(f"invalid name {name!r}; expected {CHECK_NAME_FORM}")
    elif name in BUILTIN_CHECKS:
        problems.append(f"{name!r} is a built-in check; choose another name")
    function: object = definition.run  # from the app's code: the annotation is a hope
    if not callable(function):
        problems.append(f"the check must be callable, got {type(function).__name__}")
    for key in ("timeout", "interval"):
        value = getattr(definition, key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            problems.append(f"invalid {key} {value!r}; expected a number of seconds > 0")
    threshold = definition.failure_threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        problems.append(f"invalid failure_threshold {threshold!r}; expected an integer >= 1")
    if definition.severity not in _SEVERITIES:
        problems.append(
            f"invalid severity {definition.severity!r}; expected one of "
            + ", ".join(repr(s) for s in _SEVERITIES)
        )
    for tag in definition.tags:
        if not isinstance(tag, str) or not CHECK_NAME.fullmatch(tag):
            problems.append(f"invalid tag {tag!r}; expected {CHECK_NAME_FORM}")
    if problems:
        raise CheckRegistrationError(f"cannot add health check {name!r}: " + "; ".join(problems))


_current: ContextVar[HealthChecks] = ContextVar("sidecar_health_checks")


def health_checks() -> HealthChecks:
    """Return the sidecar's ``HealthChecks`` for the app's lifespan code.

    Raise ``LookupError`` when the app does not run under the sidecar (under another
    server, or in a unit test), so the app can carry on without checks.
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError(
            "no sidecar health checks here: the app is not running under `sidecar run`, "
            "or this code runs outside the app's lifespan and requests"
        ) from None


def activate(checks: HealthChecks) -> Token[HealthChecks]:
    """Make ``checks`` what ``health_checks()`` returns in this context and its tasks."""
    return _current.set(checks)


# -- checks defined in the configuration -------------------------------------------------


async def _tcp_check(host: str, port: int) -> None:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise CheckFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _http_check(url: str) -> None:
    # The kubelet's rule for HTTP probes: 200-399 passes, redirects are not followed.
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, allow_redirects=False) as response,
        ):
            status = response.status
    except aiohttp.ClientError as exc:
        raise CheckFailed(f"GET {url} failed: {exc}") from None
    if not 200 <= status < 400:
        raise CheckFailed(f"GET {url} answered {status}")


def config_check(
    spec: HealthCheckConfig, resolve: Callable[[str], CheckFunction]
) -> CheckDefinition:
    """Build the check an entry of ``health.checks`` describes.

    ``resolve`` imports a ``callable`` check's target (the composition root passes the
    loader's function, so this module does not import app code itself).
    """
    run: CheckFunction
    runs_on: RunsOn = "admin-loop"
    if spec.type == "tcp":
        host, port = spec.host, spec.port

        def run() -> Any:
            return _tcp_check(host, port)

        where = f"{host}:{port}"
    elif spec.type == "http":
        url = spec.url

        def run() -> Any:
            return _http_check(url)

        where = url
    else:
        run = resolve(spec.target)
        runs_on = "app-loop" if is_async_callable(run) else "thread"
        where = spec.target
    definition = CheckDefinition(
        name=spec.name,
        probe=spec.probe,
        run=run,
        runs_on=runs_on,
        timeout=spec.timeout,
        interval=spec.interval,
        failure_threshold=spec.failure_threshold,
        severity=spec.severity,
        tags=spec.tags,
        source=f"config: {spec.type} {where}",
    )
    validate(definition)
    return definition


# -- the probes --------------------------------------------------------------------------


class Probes:
    """Every check of each probe: lifecycle, event-loop lag, and the registered checks."""

    def __init__(
        self,
        config: HealthConfig,
        lifecycle: Lifecycle,
        monitor: LoopMonitor,
        scheduler: CheckScheduler,
    ) -> None:
        self._config = config
        self._lifecycle = lifecycle
        self._monitor = monitor
        self._scheduler = scheduler

    def checks(self, kind: str) -> list[Check]:
        """The checks of ``livez``, ``readyz`` or ``startupz``, in display order."""
        lifecycle = self._lifecycle
        if kind == "startupz":
            return lifecycle.startup_checks()
        if kind == "livez":
            checks = lifecycle.liveness_checks()
            # A loop blocked during startup (a model loaded synchronously, say) is bounded
            # by the startup probe and lifespan.startup_timeout, not by a restart here.
            loop = self._loop_check(
                self._config.live_max_loop_lag,
                "health.live_max_loop_lag",
                enforced=lifecycle.startup_complete,
            )
            probe: ProbeName = "liveness"
        else:
            checks = lifecycle.readiness_checks()
            loop = self._loop_check(
                self._config.ready_max_loop_lag, "health.ready_max_loop_lag", enforced=True
            )
            probe = "readiness"
        if loop is not None:
            checks.append(loop)
        checks.extend(self._scheduler.results(probe))
        return checks

    def _loop_check(self, limit: float, key: str, *, enforced: bool) -> Check | None:
        monitor = self._monitor
        if not monitor.enabled or limit <= 0:
            return None
        lag = monitor.current_lag()
        details = {
            "lag_s": round(lag, 3),
            "max_lag_s": limit,
            "longest_recent_stall_s": round(monitor.longest_recent(), 3),
            "heartbeat_interval_s": monitor.interval,
        }
        if lag <= limit:
            return Check("event-loop", True, details=details)
        if not enforced:
            message = f"event loop blocked for {lag:.2f}s; not counted until startup completes"
            return Check("event-loop", True, message, details=details)
        return Check(
            "event-loop",
            False,
            f"event loop blocked for {lag:.2f}s (more than {key}: {limit:g}s)",
            details=details,
        )
