"""Run every check on its schedule in the background and keep the last results.

A probe never waits on a check. Each check runs on its own schedule and stores its last
result; ``/readyz`` and ``/livez`` read the stored results, so they answer in
microseconds however slow or hung a dependency is.

Where a check runs (``runs``):

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
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CheckRegistrationError
from ..metrics import Metrics
from ..probe import Check, Probe
from .definition import CheckDefinition
from .runs import Outcome, launch, nothing

logger = logging.getLogger("sidecar.health")


# Runs each check remembers for the status page: at the default interval (5 s), the last
# minute and a half.
RECENT_RUNS = 20


@dataclass(frozen=True)
class Run:
    """One finished run of a check: when it ended (Unix time), its outcome and duration."""

    at: float
    ok: bool
    duration: float | None  # None: nothing ran (the previous run had not finished)
    error: str | None


@dataclass(frozen=True)
class CheckHistory:
    """A check's state (pending, passing, failing), since when (Unix time), its last runs."""

    status: str
    since: float
    runs: tuple[Run, ...]


def _failures(count: int) -> str:
    return "1 failure" if count == 1 else f"{count} failures"


class _Entry:
    """A check's schedule and results; mutated only on the admin loop.

    The history (``status``, ``since``, ``recent``) is also written under the scheduler's
    lock, so that any thread may copy it.
    """

    def __init__(self, definition: CheckDefinition, added_at: float) -> None:
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
        self.in_flight: asyncio.Future[Outcome] | None = None
        self.in_flight_since = 0.0
        self.cancel_run: Callable[[], object] = nothing
        # As the probes report it: a liveness check passes until it fails.
        self.status = "passing" if self.passing else "pending"
        self.since = added_at
        self.recent: deque[Run] = deque(maxlen=RECENT_RUNS)

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
        return definition.probe is Probe.LIVENESS or self.ever_passed


class CheckScheduler:
    """Run every check on its schedule in the background; keep the last results.

    Checks are added and removed from any thread; the schedule runs on the admin loop
    (``run()`` is one of the admin server's background tasks).
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` times the runs; ``wall_clock`` dates them in the history."""
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
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
        entry = _Entry(definition, self._wall_clock())
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
        # Exported from the start, so a first failure is an increase.
        self._metrics.add_check(definition.name)
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
        done: asyncio.Future[Outcome] = loop.create_future()
        entry.in_flight, entry.in_flight_since = done, now
        entry.cancel_run = launch(definition, done, self._app_loop)
        finished, _ = await asyncio.wait({done}, timeout=definition.timeout)
        if not finished:
            entry.cancel_run()
            self._record(
                entry, False, definition.timeout, f"timed out after {definition.timeout:g}s"
            )
            return
        outcome = done.result()
        self._record(entry, outcome.ok, self._clock() - now, outcome.error)

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
        at, status = self._wall_clock(), "passing" if passing else "failing"
        with self._lock:
            entry.recent.append(Run(at, ok, duration, None if ok else error))
            if status != entry.status:
                entry.status, entry.since = status, at
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

    def results(self, probe: Probe) -> list[Check]:
        """The checks of ``probe`` as probe lines, in registration order."""
        with self._lock:
            entries = [e for e in self._entries.values() if e.definition.probe is probe]
        now = self._clock()
        return [self._as_check(entry, now) for entry in entries]

    def history(self) -> dict[str, CheckHistory]:
        """Each check's state, since when, and its last ``RECENT_RUNS`` runs, oldest first."""
        with self._lock:
            return {
                name: CheckHistory(entry.status, entry.since, tuple(entry.recent))
                for name, entry in self._entries.items()
            }

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
            "probe": definition.probe.value,
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
