"""The composition root: load the app, drive its lifespan, serve, drain, stop.

Only this module knows every part. The order of a run:

1. the event-loop heartbeat starts on this loop; the admin port comes up with the
   loop watcher and the check scheduler on its thread (probes answer from the first
   moment: live, not started, not ready);
2. import the app and the configured checks, run lifespan startup (retried with
   backoff), cancellable by a signal; the lifespan state carries the ``HealthChecks``
   the app registers its checks with;
3. bind the app port only after startup completed, then report ready;
4. on SIGTERM/SIGINT (or the injected trigger) the shutdown order below, owned here
   (``stopping.stop_serving``): not ready, keep serving for what is left of the drain delay,
   end streams, close the listener, let in-flight requests finish, cut what is left;
   a second signal skips what is left of the waits, and a first SIGINT from a terminal
   (Ctrl-C: a person waits, no load balancer routes here) skips the drain delay only;
5. the checks stop, then lifespan shutdown, always, once startup completed;
6. the heartbeat stops, the admin port goes down.

The time budget is spent once. When the drain begins, two deadlines are fixed: the
end of the drain delay, and the graceful deadline ``graceful_timeout`` after it; every
wait for requests and streams ends at one of them. What still runs at the graceful
deadline is cut (``serving.CUT_GRACE``, one second at most), then lifespan shutdown
gets its own ``shutdown_timeout``. So a stop takes at most
``drain_delay + graceful_timeout + shutdown_timeout`` plus about a second, which the
chart's ``terminationGracePeriodSeconds`` covers.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry

from ._version import __version__
from .addresses import http_url
from .admin import AdminServer
from .aio import first_of, loop_factory
from .auth import AdminGuard
from .config import Config
from .errors import AppLoadError, LifespanError
from .health import (
    STATE_KEY,
    CheckScheduler,
    HealthChecks,
    LoopMonitor,
    Probes,
    activate,
    config_check,
)
from .lifespan import LifespanDriver
from .loader import load_app, load_callable
from .metrics import STARTUP_FAILURE_REASONS, Metrics
from .probe import verdicts
from .process import exit_now, stdin_is_a_terminal
from .record import StartupRecord
from .serving import AppServer
from .state import Lifecycle, Phase, log_transition
from .status import Status, Traffic, served_by
from .stopping import StopRequests, linger, stop_serving
from .types import ASGIApp

logger = logging.getLogger("sidecar")

T = TypeVar("T")
ShutdownTrigger = Callable[[], Awaitable[Any]]


class Reporter(Protocol):
    """A worker's link to its supervisor (``workers.link.WorkerLink``)."""

    def attach(self, sidecar: Sidecar) -> None:
        """Report ``sidecar``'s status from now on and obey the supervisor on it."""

    async def run(self) -> None: ...


class Sidecar:
    """One sidecar process: its lifecycle, metrics, admin server and app server."""

    def __init__(
        self,
        config: Config,
        *,
        app: ASGIApp | None = None,
        registry: CollectorRegistry | None = None,
        process_collectors: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_abort: Callable[[int], None] | None = None,
        on_terminal: Callable[[], bool] | None = None,
        link: Reporter | None = None,
    ) -> None:
        """``on_abort`` ends the process with the given code on a third signal (the CLI
        passes ``os._exit``); without it, further signals only repeat the second one.

        With ``link`` this is a worker of a pod with several: no admin port (the
        supervisor serves it), the status goes to the supervisor, which also decides
        when to stop; SIGINT is left to the supervisor.
        """
        self._link = link
        self.config = config
        self._app = app
        # The drain clock: when a drain began and how much of its delay is left.
        self.lifecycle = Lifecycle(drain_delay=config.shutdown.drain_delay, clock=clock)
        self.metrics = Metrics(
            version=__version__,
            phases=[phase.value for phase in Phase],
            registry=registry,
            process_collectors=process_collectors,
            max_routes=config.metrics.max_routes,
            request_metric_names=config.metrics.names,
        )
        self.lifecycle.subscribe(log_transition)
        self.loop_monitor = LoopMonitor(config.health, self.metrics.loop_lag)
        self.checks = CheckScheduler(self.metrics)
        probes = Probes(config.health, self.lifecycle, self.loop_monitor, self.checks)
        self.probes = probes
        self.metrics.lifecycle.sampler = self._lifecycle_sample
        self.startup_record = StartupRecord(config.lifespan.state_dir, STARTUP_FAILURE_REASONS)
        self.metrics.registry.register(self.startup_record)
        self.status = Status(
            config,
            self.lifecycle,
            probes,
            self.checks,
            self.loop_monitor,
            self.startup_record,
            version=__version__,
            started_at=time.time(),
            traffic=self._traffic,
        )
        self.admin = AdminServer(
            config.admin,
            self.lifecycle,
            self.metrics,
            probes,
            background=(
                self.loop_monitor.watch,
                self.checks.run,
                *((link.run,) if link is not None else ()),
            ),
            guard=AdminGuard.from_config(config.admin),
            serve_port=link is None,
            status=self.status.snapshot,
        )
        if link is not None:
            link.attach(self)
        self._config_checks_added = False
        self.app_server: AppServer | None = None
        #: Set once the app port is bound and the sidecar reports ready.
        self.serving = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifespan_shutdown_state = "not begun"
        self._requests = StopRequests(
            self.lifecycle,
            config.shutdown.drain_delay,
            # Whether a person at a terminal started this process (SIGINT is their Ctrl-C).
            on_terminal=on_terminal if on_terminal is not None else stdin_is_a_terminal,
            abort=(lambda signum: self._abort(signum, on_abort)) if on_abort else None,
        )
        self._stop, self._force = self._requests.stop, self._requests.force

    # -- shutdown requests ----------------------------------------------------------------

    def request_shutdown(self, *, force: bool = False) -> None:
        """Begin the graceful shutdown; a second request (or ``force``) cuts it short.

        Safe to call from any thread and from signal handlers.
        """
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._requests.request, force)

    def _abort(self, signum: signal.Signals, on_abort: Callable[[int], None]) -> None:
        """A third signal: say what is cut, then exit at once (``128 + signum``)."""
        server = self.app_server
        code = 128 + int(signum)
        logger.error(
            "third signal (%s): exiting at once with code %d, in phase %s; cut: "
            "%d request(s) in flight, %d WebSocket(s), lifespan shutdown %s",
            signal.Signals(signum).name,
            code,
            self.lifecycle.phase.value,
            server.in_flight if server is not None else 0,
            server.websocket_connections if server is not None else 0,
            self._lifespan_shutdown_state,
            extra={"event": "exit", "exit_code": code},
        )
        on_abort(code)

    # -- logging and metrics of transitions -----------------------------------------------

    def _lifecycle_sample(self) -> tuple[str, bool, bool]:
        """The phase and the verdicts of /readyz and /livez now (for a scrape)."""
        return (self.lifecycle.phase.value, *verdicts(self.probes.checks))

    def _traffic(self) -> Traffic:
        """What the app port is doing now, for the status page."""
        requests = self.metrics.requests if self.config.metrics.requests else None
        return served_by(self.app_server, requests)

    def _on_lifespan_crash(self, message: str) -> None:
        self.metrics.lifespan_crashes.inc()
        self.lifecycle.mark_lifespan_crashed(message)

    # -- the run ------------------------------------------------------------------------------

    async def serve(self, *, shutdown_trigger: ShutdownTrigger | None = None) -> None:
        """Run until shut down; raise ``AppLoadError``/``LifespanError``/``BindError``.

        Signal handlers for SIGTERM and SIGINT are installed only when no
        ``shutdown_trigger`` is given; with one, shutdown begins when it returns.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        installed: list[signal.Signals] = []
        trigger_task: asyncio.Task[None] | None = None
        if shutdown_trigger is None:
            # A worker leaves SIGINT (a terminal's Ctrl-C, sent to the whole process
            # group) to its supervisor, which counts it once.
            signals = (
                (signal.SIGTERM,) if self._link is not None else (signal.SIGTERM, signal.SIGINT)
            )
            for signum in signals:
                loop.add_signal_handler(signum, self._requests.on_signal, signum)
                installed.append(signum)
        else:
            trigger_task = asyncio.create_task(self._watch(shutdown_trigger))
        self.checks.attach_app_loop(loop)
        self.loop_monitor.start(loop)
        try:
            self.admin.start()
            if self._link is None:
                logger.info("admin endpoints on %s", http_url(self.admin.address))
            if self.admin.guard.open and self._link is None:
                logger.info(
                    "/prestop accepts any caller; set admin.token (or admin.token_file) so "
                    "that only the kubelet's hook and operators can drain this pod"
                )
            driver = await self._start_app()
            if driver is None:
                self.lifecycle.transition(Phase.STOPPING, "shutdown requested during startup")
                self.lifecycle.transition(Phase.STOPPED)
                return
            await self._serve_app(driver)
        except (AppLoadError, LifespanError):
            # The app failed to start: the run ends with exit code 3, once the failure
            # had a chance to be scraped.
            await linger(
                self.config.lifespan.failure_linger, "the app failed to start", until=self._stop
            )
            raise
        except BaseException:
            if self.lifecycle.phase not in (Phase.STOPPED, Phase.FAILED):
                self.lifecycle.transition(Phase.FAILED)
            raise
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            if trigger_task is not None:
                trigger_task.cancel()
            try:
                await self.checks.stop()
            finally:  # even when cancelled while stopping the checks
                self.loop_monitor.stop()
                self.admin.stop()

    async def _watch(self, trigger: ShutdownTrigger) -> None:
        await trigger()
        self._requests.request()

    async def _until_stopped(self, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
        """Await ``awaitable`` unless shutdown is requested first; then cancel it.

        Returns ``(True, result)`` when it finished, ``(False, None)`` when cancelled.
        """
        work = asyncio.ensure_future(awaitable)
        try:
            await first_of(work, self._stop.wait())
        finally:
            if not work.done():  # cancelled by first_of, or we were cancelled
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if work.cancelled():
            return False, None
        return True, work.result()

    def _startup_failed(self, reason: str, message: str, *, final: str | None) -> None:
        """Count a failed startup (``reason``); ``final`` ends the run as FAILED, saying why."""
        self.startup_record.failure(reason, message)
        self.lifecycle.mark_startup_failed(message)
        if final is not None:
            self.lifecycle.transition(Phase.FAILED, final)

    def _load(self) -> ASGIApp:
        if self._app is not None:
            return self._app
        app_config = self.config.app
        try:
            app = load_app(
                app_config.target, factory=app_config.factory, app_dir=app_config.app_dir
            )
        except AppLoadError as exc:
            self._startup_failed("import", str(exc), final="the app could not be loaded")
            raise
        self._app = app
        return app

    def _add_config_checks(self) -> None:
        """Import and schedule ``health.checks`` (once; after the app, from its app_dir)."""
        if self._config_checks_added:
            return
        self._config_checks_added = True
        app_dir = self.config.app.app_dir
        for index, spec in enumerate(self.config.health.checks):
            what = f"health check {spec.name!r} (health.checks[{index}].target)"
            resolve = functools.partial(load_callable, what=what, app_dir=app_dir)
            try:
                definition = config_check(spec, resolve)
            except AppLoadError as exc:
                self._startup_failed("import", str(exc), final="a health check could not be loaded")
                raise
            self.checks.add(definition)

    async def _start_app(self) -> LifespanDriver | None:
        """Import the app and run lifespan startup; ``None`` if shutdown came first."""
        self.startup_record.attempt()  # the import belongs to the first attempt
        app = self._load()
        self._add_config_checks()
        config = self.config.lifespan
        for attempt in range(1, config.startup_attempts + 1):
            if attempt > 1:
                self.startup_record.attempt()
            # Each attempt gets its own handle: checks registered by an attempt that
            # failed go with it. The context variable reaches the lifespan task (it
            # copies this context), for frameworks whose lifespan cannot see the state.
            health = HealthChecks(self.checks)
            activate(health)
            driver = LifespanDriver(
                config, app, on_crash=self._on_lifespan_crash, state={STATE_KEY: health}
            )
            began = time.perf_counter()
            try:
                finished, _ = await self._until_stopped(driver.startup())
            except LifespanError as exc:
                health.close()
                elapsed = time.perf_counter() - began
                self.metrics.startup_duration.set(elapsed)
                last = attempt == config.startup_attempts
                self._startup_failed(
                    exc.reason,
                    str(exc).splitlines()[0],
                    final=f"startup failed ({exc.reason})" if last else None,
                )
                logger.error(
                    "lifespan startup attempt %d/%d failed after %.3fs (%s): %s",
                    attempt,
                    config.startup_attempts,
                    elapsed,
                    exc.reason,
                    exc,
                    extra={"event": "startup_failed", "reason": exc.reason, "attempt": attempt},
                )
                if last:
                    raise
                backoff = min(config.retry_backoff * 2 ** (attempt - 1), config.retry_backoff_max)
                logger.info("retrying lifespan startup in %.1fs", backoff)
                finished, _ = await self._until_stopped(asyncio.sleep(backoff))
                if not finished:
                    logger.info("shutdown requested while waiting to retry startup")
                    return None
                continue
            if not finished:
                health.close()
                logger.info("shutdown requested during lifespan startup; startup cancelled")
                return None
            # Requests get copies of the app's own state; the handle was for the
            # lifespan (apps that need it later keep a reference, or health_checks()).
            if driver.state.get(STATE_KEY) is health:
                del driver.state[STATE_KEY]
            elapsed = time.perf_counter() - began
            self.metrics.startup_duration.set(elapsed)
            how = "lifespan startup complete" if driver.supported else "started without lifespan"
            logger.info(
                "%s in %.3fs",
                how,
                elapsed,
                extra={"event": "startup_complete", "duration_s": round(elapsed, 6)},
            )
            return driver
        raise AssertionError("unreachable")  # pragma: no cover

    async def _serve_app(self, driver: LifespanDriver) -> None:
        config = self.config
        app = self._load()
        server = AppServer(
            config.server,
            app,
            driver.state,
            metrics=self.metrics if config.metrics.requests else None,
            access_log=config.logging.access_log,
            access_log_format=config.logging.access_log_format,
            websocket_close_code=config.shutdown.websocket_close_code,
        )
        self.app_server = server
        try:
            await server.start()
        except BaseException:
            await self._lifespan_shutdown(driver)
            raise
        self.metrics.connections_open.set_function(lambda: server.connections_open)
        self.metrics.websocket_connections.set_function(lambda: server.websocket_connections)
        logger.info("serving the app on %s", server.url)
        if config.server.gc_freeze:
            # Everything alive now (imports, the app, its startup state) lives as long as
            # the process: take it out of the collector's reach, so full collections stop
            # walking it on the request path (they cost milliseconds of tail latency).
            # Only the young generations are collected first: a full collection here
            # takes tens of milliseconds of startup and finds a few dozen objects.
            gc.collect(1)
            gc.freeze()
        self.lifecycle.mark_started()
        self.serving.set()

        await self._stop.wait()
        await self._stop_serving(server)
        # Lifespan shutdown runs once startup completed, whatever happened to requests.
        await self._lifespan_shutdown(driver)
        self.lifecycle.transition(Phase.STOPPED)
        if server.aborted:
            await linger(
                self.config.lifespan.failure_linger,
                f"{server.aborted} request(s) were cut",
                until=self._force,
            )

    async def _stop_serving(self, server: AppServer) -> None:
        """Drain and stop the app port (``stopping.stop_serving``), then count the drain."""
        lifecycle = self.lifecycle
        aborted = await stop_serving(server, lifecycle, self.config.shutdown, self._requests)
        started = lifecycle.drain_started
        if started is not None:
            self.metrics.drain_duration.set(lifecycle.clock() - started)
        if aborted:
            unanswered = server.aborted_unanswered
            aborted_total = self.metrics.requests_aborted
            aborted_total.labels("before_response").inc(unanswered)
            aborted_total.labels("during_response").inc(aborted - unanswered)

    async def _lifespan_shutdown(self, driver: LifespanDriver) -> None:
        # The app is about to close what its checks use; stop them first.
        self._lifespan_shutdown_state = "in progress"
        await self.checks.stop()
        began = time.perf_counter()
        try:
            await driver.shutdown()
        except LifespanError as exc:
            self.metrics.shutdown_failures.labels(exc.reason).inc()
            logger.error(
                "lifespan shutdown failed (%s): %s",
                exc.reason,
                exc,
                extra={"event": "shutdown_failed", "reason": exc.reason},
            )
        else:
            if driver.supported:
                logger.info(
                    "lifespan shutdown complete in %.3fs",
                    time.perf_counter() - began,
                    extra={"event": "shutdown_complete"},
                )
        finally:
            self.metrics.shutdown_duration.set(time.perf_counter() - began)
            self._lifespan_shutdown_state = "done"


def run(config: Config, *, link: Reporter | None = None) -> None:
    """Run a sidecar for ``config`` in this thread until it stops (the CLI's entry).

    ``link``: this process is a worker of a pod with several (``workers.child``).
    """
    with asyncio.Runner(loop_factory=loop_factory(config.server.loop)) as runner:
        runner.run(Sidecar(config, on_abort=exit_now, link=link).serve())
