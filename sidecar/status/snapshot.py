"""The status snapshot: everything the status page shows, as one plain dict.

The admin port serves it on ``/`` as HTML (``page``) and, when asked for
``application/json``, as this very dict. It is built when someone asks, on the admin
thread, from what the parts keep anyway (the lifecycle's timeline, the checks' last
runs, the event loop's lag history: each a small fixed-size buffer), so it costs
nothing while nobody looks, and it never waits on the app's event loop.

The schema (``"schema": 1``); times are Unix times in seconds, durations seconds:

- ``generated_at``; ``sidecar``: ``version``, ``python``, ``pid``, ``hostname``, ``app``
  (the target), ``started_at``, ``uptime_s``;
- ``phase``: the lifecycle phase now;
- ``timeline``: the phases so far, oldest first: ``phase``, ``started_at``,
  ``duration_s`` (so far, for the current one), ``reason`` (why it began), ``current``;
- ``probes``: ``readiness``, ``liveness`` and ``startup``, each with ``endpoint``
  (``/readyz``...), ``ok`` (the probe's verdict) and ``checks``: each check as the probe's
  JSON answer gives it (``name``, ``ok``, ``message``, ``critical``, ``tags``,
  ``details``), and for a registered or configured check ``history``: ``status``
  (pending, passing, failing), ``since`` (its last change) and ``runs``, the last ones,
  oldest first (``at``, ``ok``, ``duration_s``, ``error``);
- ``event_loop``: ``monitored``, ``lag_s``, ``longest_recent_stall_s`` (over
  ``recent_window_s``), ``heartbeat_interval_s``, ``ready_max_lag_s``,
  ``live_max_lag_s`` (0: that check is off), ``history_step_s`` and
  ``history_max_lag_s``: the longest lag of each step, oldest first, the last one now;
- ``traffic``: ``serving`` (the app port is bound), ``requests_in_flight``,
  ``connections_open``, ``websockets_open``, ``requests_total`` and ``responses`` (by
  status class, ``"2xx"``...; both ``None`` when ``metrics.requests`` is off);
- ``startup``: ``attempts``, ``failures`` (by reason), ``last_failure`` (``reason``,
  ``message``, ``at``) or ``None``: the pod's, across restarts with
  ``lifespan.state_dir``;
- ``config``: the effective configuration, as ``check-config`` shows it (secrets
  redacted);
- ``workers``: one dict per worker process when the sidecar runs several, else empty:
  ``slot``, ``pid``, ``phase``, ``ready`` (bool), ``loop_lag_s``, ``restarts``,
  ``rss_bytes`` (the details of the ``worker-<slot>`` probe lines).

A process that runs no app code itself (a supervisor of workers) has no checks of its own
to schedule and no event loop of its own to watch: without a scheduler, checks carry no
``history``; without a loop monitor, ``event_loop.monitored`` is false.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from ..config import Config
from ..health import CheckScheduler, LoopMonitor
from ..health.loop_monitor import HISTORY_STEP, RECENT_WINDOW
from ..health.scheduler import CheckHistory
from ..metrics import RequestStats
from ..probe import Check, Probe, check_document, passes
from ..record import StartupRecord
from ..state import Lifecycle

SCHEMA = 1

# The order the page shows the probes in: the one that routes traffic first.
PROBES = (Probe.READINESS, Probe.LIVENESS, Probe.STARTUP)


class ProbeSource(Protocol):
    def checks(self, probe: Probe) -> list[Check]: ...


#: Request records as ``RequestStats.snapshot`` gives them: (method, route, status) and the
#: observations per latency bucket, their sum last.
RequestRecords = Iterable[tuple[tuple[str, str, int], Sequence[float]]]


class Traffic(NamedTuple):
    """What the app port is doing now, however many processes serve it."""

    serving: bool  # the app port is bound
    in_flight: int
    connections_open: int
    websockets_open: int
    requests: RequestRecords | None  # None while request metrics are off


class AppPort(Protocol):
    """What the status needs of the app server."""

    @property
    def in_flight(self) -> int: ...

    @property
    def connections_open(self) -> int: ...

    @property
    def websocket_connections(self) -> int: ...


def served_by(server: AppPort | None, requests: RequestStats | None) -> Traffic:
    """The traffic of one process: its app server (once it exists) and request metrics."""
    if server is None:
        return Traffic(False, 0, 0, 0, requests.snapshot() if requests is not None else None)
    return Traffic(
        True,
        server.in_flight,
        server.connections_open,
        server.websocket_connections,
        requests.snapshot() if requests is not None else None,
    )


class Status:
    """Build status snapshots from the sidecar's parts (call ``snapshot`` from any thread)."""

    def __init__(
        self,
        config: Config,
        lifecycle: Lifecycle,
        probes: ProbeSource,
        scheduler: CheckScheduler | None,
        monitor: LoopMonitor | None,
        record: StartupRecord,
        *,
        version: str,
        started_at: float,
        traffic: Callable[[], Traffic],
        workers: Callable[[], Sequence[dict[str, Any]]] = lambda: (),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``traffic`` says what the app port is doing now; ``workers`` returns the
        workers' dicts (see the module's docstring), when there are several."""
        self._config = config
        self._lifecycle = lifecycle
        self._probes = probes
        self._scheduler = scheduler
        self._monitor = monitor
        self._record = record
        self._version = version
        self._started_at = started_at
        self._traffic_now = traffic
        self._workers = workers
        self._wall_clock = wall_clock
        # Neither changes while the process runs.
        self._hostname = socket.gethostname()
        self._python = platform.python_version()

    def snapshot(self) -> dict[str, Any]:
        """Return the status now, as the module's docstring describes it."""
        now = self._wall_clock()
        return {
            "schema": SCHEMA,
            "generated_at": now,
            "sidecar": {
                "version": self._version,
                "python": self._python,
                "pid": os.getpid(),
                "hostname": self._hostname,
                "app": self._config.app.target,
                "started_at": self._started_at,
                "uptime_s": round(max(now - self._started_at, 0.0), 3),
            },
            "phase": self._lifecycle.phase.value,
            "timeline": [
                {
                    "phase": span.phase.value,
                    "started_at": span.started_at,
                    "duration_s": round(span.duration, 6),
                    "reason": span.reason,
                    "current": span.current,
                }
                for span in self._lifecycle.timeline()
            ],
            "probes": self._probe_documents(),
            "event_loop": self._event_loop(),
            "traffic": self._traffic(),
            "startup": self._startup(),
            "config": self._config.to_dict(),
            "workers": [dict(worker) for worker in self._workers()],
        }

    def _probe_documents(self) -> dict[str, Any]:
        scheduler = self._scheduler
        histories = scheduler.history() if scheduler is not None else {}
        documents: dict[str, Any] = {}
        for probe in PROBES:
            checks = self._probes.checks(probe)
            entries = []
            for check in checks:
                entry = check_document(check)
                # Names are unique, and never a built-in check's: only scheduled checks match.
                history = histories.get(check.name)
                if history is not None:
                    entry["history"] = _history_document(history)
                entries.append(entry)
            documents[probe.value] = {
                "endpoint": "/" + probe.endpoint,
                "ok": passes(checks),
                "checks": entries,
            }
        return documents

    def _event_loop(self) -> dict[str, Any]:
        monitor, health = self._monitor, self._config.health
        document: dict[str, Any] = {
            "monitored": False,
            "lag_s": 0.0,
            "longest_recent_stall_s": 0.0,
            "recent_window_s": RECENT_WINDOW,
            "heartbeat_interval_s": health.heartbeat_interval,
            "ready_max_lag_s": health.ready_max_loop_lag,
            "live_max_lag_s": health.live_max_loop_lag,
            "history_step_s": HISTORY_STEP,
            "history_max_lag_s": [],
        }
        if monitor is not None and monitor.enabled:
            document["monitored"] = True
            document["lag_s"] = round(monitor.current_lag(), 6)
            document["longest_recent_stall_s"] = round(monitor.longest_recent(), 6)
            document["history_max_lag_s"] = [round(lag, 6) for lag in monitor.lag_history()]
        return document

    def _traffic(self) -> dict[str, Any]:
        traffic = self._traffic_now()
        total: int | None = None
        responses: dict[str, int] | None = None
        if traffic.requests is not None:
            total, responses = 0, {}
            for (_, _, status), record in traffic.requests:
                count = int(sum(record[:-1]))  # observations per bucket; the last is the sum
                kind = f"{status // 100}xx"
                responses[kind] = responses.get(kind, 0) + count
                total += count
            responses = dict(sorted(responses.items()))
        return {
            "serving": traffic.serving,
            "requests_in_flight": traffic.in_flight,
            "connections_open": traffic.connections_open,
            "websockets_open": traffic.websockets_open,
            "requests_total": total,
            "responses": responses,
        }

    def _startup(self) -> dict[str, Any]:
        record = self._record
        last = record.last_failure
        return {
            "attempts": record.attempts,
            "failures": dict(sorted(record.failures.items())),
            "last_failure": None
            if last is None
            else {"reason": last.reason, "message": last.message, "at": last.time},
        }


def _history_document(history: CheckHistory) -> dict[str, Any]:
    return {
        "status": history.status,
        "since": history.since,
        "runs": [
            {
                "at": run.at,
                "ok": run.ok,
                "duration_s": None if run.duration is None else round(run.duration, 6),
                "error": run.error,
            }
            for run in history.runs
        ],
    }
