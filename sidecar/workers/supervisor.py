"""The supervisor: one admin port, one listening socket, ``server.workers`` workers.

The composition root of a pod with several workers (``runner`` is the one of a single
process). The order of a run:

1. bind the app port once; the admin port comes up (probes answer at once: live, not
   started, not ready);
2. start the workers (``pool``), each a full single-process sidecar on the shared socket
   without an admin port; report ready once every worker completed its startup, and
   while at least ``server.min_ready_workers`` are ready;
3. on SIGTERM/SIGINT or ``/prestop``: not ready, keep serving for what is left of the
   drain delay (the workers serve on), then tell every worker to stop: each closes its
   listener, finishes its requests within ``graceful_timeout`` and runs its lifespan
   shutdown within ``shutdown_timeout``; a worker still running after that (and the
   second of grace the cut takes) is killed. So the stop fits the bound of a single
   process, ``drain_delay + graceful_timeout + shutdown_timeout`` plus about a second;
4. a worker whose app fails to start (exit code 3, after its own retries) ends the pod:
   the others stop, and the process exits 3 with that worker's message.

A second signal skips what is left of the waits; a third kills every worker and exits at
once (``128 + signal``). Ctrl-C in a terminal reaches the whole process group; workers
ignore SIGINT, so it counts once, here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from .._version import __version__
from ..addresses import http_url
from ..admin import AdminServer
from ..aio import first_of
from ..auth import AdminGuard
from ..config import Config, ServerConfig
from ..errors import AppLoadError, BindError, LifespanError, SidecarError
from ..metrics import STARTUP_FAILURE_REASONS
from ..probe import verdicts
from ..process import exit_now, stdin_is_a_terminal
from ..record import StartupRecord
from ..serving import CUT_GRACE
from ..state import Lifecycle, Phase, log_transition
from ..status import Status, Traffic
from ..stopping import StopRequests, linger, until_drain_end
from .metrics import SupervisorMetrics
from .pool import Pool, Worker
from .probes import WorkerProbes

logger = logging.getLogger("sidecar")

# Seconds for a worker process to exit once its lifespan shutdown returned (interpreter
# teardown), on top of the single-process bound.
EXIT_MARGIN = 1.0


class WorkersFailed(SidecarError):
    """Workers did not stop cleanly (killed at the deadline, or exited with an error)."""


def bind_app_socket(config: ServerConfig) -> socket.socket:
    """Bind and listen on the app port once, for every worker to accept on."""
    host, port = config.host, config.port
    try:
        sock = socket.create_server(
            (host, port),
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            backlog=config.backlog,
            reuse_port=False,
        )
    except OSError as exc:
        raise BindError(
            f"cannot bind the app port {host}:{port} (server.host/server.port): "
            f"{exc.strerror or exc}"
        ) from exc
    sock.set_inheritable(True)
    return sock


def worker_document(config: Config, listen_fd: int) -> dict[str, Any]:
    """The configuration a worker runs with: the supervisor's, minus what it does itself."""
    document = config.to_document()
    # One process each, on the shared socket; replacing workers is the supervisor's job.
    document["server"].update(
        workers=1, fd=listen_fd, min_ready_workers=0, max_requests=0, max_worker_memory=0
    )
    # The drain delay, the startup record and the linger are the supervisor's.
    document["shutdown"]["drain_delay"] = 0.0
    document["lifespan"].update(state_dir="", failure_linger=0.0)
    return document


class Supervisor:
    """Run a pod's workers behind one admin port until shut down."""

    def __init__(
        self,
        config: Config,
        *,
        on_abort: Callable[[int], None] | None = None,
        process_collectors: bool = True,
    ) -> None:
        self.config = config
        self._on_abort = on_abort
        self._listen: socket.socket | None = None
        self.lifecycle = Lifecycle(drain_delay=config.shutdown.drain_delay)
        self.lifecycle.subscribe(log_transition)
        self.record = StartupRecord(config.lifespan.state_dir, STARTUP_FAILURE_REASONS)
        self.pool = Pool(
            config,
            self._worker_config,
            on_exit=self._on_exit,
            on_startup_failure=self._on_startup_failure,
        )
        server = config.server
        self.probes = WorkerProbes(
            self.lifecycle, self.pool, server.min_ready_workers or server.workers
        )
        self.metrics = SupervisorMetrics(
            config,
            self.pool,
            self.record,
            self._lifecycle_sample,
            process_collectors=process_collectors,
        )
        self.admin = AdminServer(
            config.admin,
            self.lifecycle,
            self.metrics,
            self.probes,
            guard=AdminGuard.from_config(config.admin),
            # No checks or event loop of its own to show: those are the workers'.
            status=Status(
                config,
                self.lifecycle,
                self.probes,
                None,
                None,
                self.record,
                version=__version__,
                started_at=time.time(),
                traffic=self._traffic,
                workers=self.probes.rows,
            ).snapshot,
        )
        self._requests = StopRequests(
            self.lifecycle,
            config.shutdown.drain_delay,
            on_terminal=stdin_is_a_terminal,
            abort=self._abort if on_abort is not None else None,
        )
        self._stop, self._force = self._requests.stop, self._requests.force

    def _lifecycle_sample(self) -> tuple[str, bool, bool]:
        """The phase and the verdicts of /readyz and /livez now (for a scrape)."""
        return (self.lifecycle.phase.value, *verdicts(self.probes.checks))

    def _traffic(self) -> Traffic:
        """The app port's traffic over every worker, for the status page."""
        sums = self.metrics.workers.sums()
        gauges = sums.gauges
        return Traffic(
            self._listen is not None,
            int(gauges.get("in_flight", 0)),
            int(gauges.get("connections_open", 0)),
            int(gauges.get("websocket_connections", 0)),
            sorted(sums.requests.items()) if self.config.metrics.requests else None,
        )

    def _worker_config(self, slot: int) -> dict[str, Any]:
        listen = self._listen
        if listen is None:  # pragma: no cover - workers start after the bind
            raise RuntimeError("workers start after the app port is bound")
        self.record.attempt()
        return worker_document(self.config, listen.fileno())

    def _on_exit(self, worker: Worker) -> None:
        # What it counted stays in the sums: the counters never go backwards.
        self.metrics.workers.retire(worker)

    def _on_startup_failure(self, worker: Worker, reason: str, message: str) -> None:
        self.record.failure(reason, message)
        self.lifecycle.mark_startup_failed(f"worker {worker.slot}: {message}")

    # -- shutdown requests ----------------------------------------------------------------

    def _abort(self, signum: signal.Signals) -> None:
        """A third signal: kill every worker, then exit at once (``128 + signum``)."""
        code = 128 + int(signum)
        logger.error(
            "third signal (%s): killing every worker and exiting at once with code %d, in phase %s",
            signal.Signals(signum).name,
            code,
            self.lifecycle.phase.value,
            extra={"event": "exit", "exit_code": code},
        )
        self.pool.kill()
        if self._on_abort is not None:
            self._on_abort(code)

    # -- the run ------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until shut down; raise ``AppLoadError``/``LifespanError`` when a worker's
        app failed to start, ``BindError``, or ``WorkersFailed``."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._requests.on_signal, signum)
        pool, lifecycle = self.pool, self.lifecycle
        try:
            self._listen = bind_app_socket(self.config.server)
            self.admin.start()
            logger.info("admin endpoints on %s", http_url(self.admin.address))
            logger.info(
                "starting %d workers on %s:%d",
                pool.size,
                self.config.server.host,
                self._listen.getsockname()[1],
            )
            await pool.start(self._listen)
            if await self._until_started():
                lifecycle.mark_started()
                await first_of(self._stop.wait(), pool.fatal.wait())
            if pool.fatal.is_set():
                await self._fail()
            await self._stop_workers()
        except BaseException:
            if lifecycle.phase not in (Phase.STOPPED, Phase.FAILED):
                lifecycle.transition(Phase.FAILED)
            raise
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            if self._listen is not None:
                self._listen.close()
            self.admin.stop()

    async def _until_started(self) -> bool:
        """Wait until every worker completed its startup; ``False`` if stopped first."""
        pool = self.pool
        while not pool.started:
            pool.changed.clear()
            winner = await first_of(pool.changed.wait(), self._stop.wait(), pool.fatal.wait())
            if winner is None or self._stop.is_set() or pool.fatal.is_set():
                return False
        return True

    async def _fail(self) -> None:
        """A worker's app failed to start: stop the others, then raise its error."""
        reason, message = self.pool.fatal_failure or ("failed", "a worker failed to start")
        self.lifecycle.transition(Phase.FAILED, f"worker startup failed ({reason})")
        await linger(
            self.config.lifespan.failure_linger, "a worker's app failed to start", until=self._stop
        )
        await self.pool.stop(force=True)
        await self.pool.wait_stopped(asyncio.get_running_loop().time() + self._stop_budget())
        if reason == "config":
            raise WorkersFailed(message)
        if reason == "import":
            raise AppLoadError("import_failed", message)
        raise LifespanError("startup", reason, message)

    def _stop_budget(self) -> float:
        """Seconds a worker told to stop may take: requests, lifespan shutdown, the cut."""
        config = self.config
        return (
            config.shutdown.graceful_timeout
            + config.lifespan.shutdown_timeout
            + CUT_GRACE
            + EXIT_MARGIN
        )

    async def _stop_workers(self) -> None:
        """The shutdown order of a pod with workers (see the module doc)."""
        loop, lifecycle, pool, force = (
            asyncio.get_running_loop(),
            self.lifecycle,
            self.pool,
            self._force,
        )
        if lifecycle.phase is Phase.FAILED:
            return
        drain_end = lifecycle.begin_drain()
        skip = self._requests.skip_delay
        left = 0.0 if skip.is_set() else drain_end - lifecycle.clock()
        if left > 0:
            logger.info("draining: the workers serve for %.1fs more", left)
            await until_drain_end(lifecycle, drain_end, skip)
        lifecycle.transition(Phase.STOPPING, f"stopping {len(pool.everyone)} workers")
        await pool.stop(force=force.is_set())
        deadline = loop.time() + self._stop_budget()
        if not force.is_set():
            # A second signal while the workers finish: tell them to skip their waits.
            escalate = asyncio.ensure_future(self._escalate())
            try:
                clean = await pool.wait_stopped(deadline)
            finally:
                escalate.cancel()
        else:
            clean = await pool.wait_stopped(deadline)
        lifecycle.transition(Phase.STOPPED)
        failed = [w for w in pool.everyone if w.exit_code not in (0, None)]
        if not clean or failed:
            raise WorkersFailed(
                "workers did not stop cleanly: "
                + ", ".join(
                    f"worker {w.slot} (pid {w.pid}) exit code {w.exit_code}" for w in failed
                )
            )

    async def _escalate(self) -> None:
        await self._force.wait()
        await self.pool.stop(force=True)


def run_supervisor(config: Config) -> None:
    """Run a pod of ``server.workers`` workers in this process until it stops.

    The supervisor's own loop is plain asyncio: it runs no app code.
    """
    asyncio.run(Supervisor(config, on_abort=exit_now).serve())
