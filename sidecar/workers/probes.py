"""The probes of a pod with several workers: the supervisor's lifecycle and every worker.

- ``/startupz`` passes once every worker completed its startup.
- ``/readyz`` passes while at least ``server.min_ready_workers`` workers are ready and
  the supervisor is not draining.
- ``/livez`` fails only when the supervisor cannot keep workers running (a slot whose
  workers keep exiting before they are ready): one dead worker is replaced, which is no
  reason to restart the container.

Each worker has a line of its own (``worker-0`` ...), reported but not counted on its
own (severity warning), with its pid, phase, loop lag and restarts in the JSON details;
the ``workers`` line decides.
"""

from __future__ import annotations

from ..probe import Builtin, Check, Probe
from ..state import Lifecycle
from .pool import CRASH_LOOP, Pool, Worker

WORKERS = "workers"


def _details(worker: Worker, restarts: int) -> dict[str, object]:
    return {
        "slot": worker.slot,
        "pid": worker.pid,
        "phase": worker.phase,
        "ready": worker.ready,
        "loop_lag_s": round(float(worker.status.get("lag", 0.0)), 3),
        "restarts": restarts,
        "rss_bytes": worker.rss,
    }


def _first_failure(worker: Worker, probe: Probe) -> str:
    """The first failing critical check a worker reports for ``probe``, for people."""
    for name, ok, message, critical in worker.status.get(probe.value, ()):
        if not ok and critical:
            return f"{name}: {message}"
    return f"phase {worker.phase}"


class WorkerProbes:
    """The checks of each probe over the supervisor's lifecycle and its workers."""

    def __init__(self, lifecycle: Lifecycle, pool: Pool, min_ready: int) -> None:
        self._lifecycle = lifecycle
        self._pool = pool
        self._min_ready = min_ready

    def checks(self, probe: Probe) -> list[Check]:
        lifecycle, pool = self._lifecycle, self._pool
        if probe is Probe.STARTUP:
            checks = lifecycle.startup_checks()
        elif probe is Probe.LIVENESS:
            checks = [Check(Builtin.PING, True), self._liveness()]
        else:
            checks = [*lifecycle.readiness_checks(), self._readiness()]
        restarts = pool.restarts_by_slot
        for worker in pool.workers:
            checks.append(self._worker_line(worker, probe, restarts.get(worker.slot, 0)))
        return checks

    def rows(self) -> list[dict[str, object]]:
        """Each worker's details, as its probe lines carry them (the status page's table)."""
        restarts = self._pool.restarts_by_slot
        return [_details(worker, restarts.get(worker.slot, 0)) for worker in self._pool.workers]

    def _readiness(self) -> Check:
        pool = self._pool
        ready, size = pool.ready_count, pool.size
        needed = self._min_ready
        ok = ready >= needed
        message = f"{ready}/{size} workers ready" + ("" if ok else f" (fewer than {needed})")
        details = {"ready": ready, "workers": size, "min_ready_workers": needed}
        return Check(WORKERS, ok, "ok" if ok else message, details=details)

    def _liveness(self) -> Check:
        pool = self._pool
        alive = sum(1 for worker in pool.workers if worker.exit_code is None)
        if pool.crash_looping:
            message = (
                f"workers keep exiting before they are ready ({CRASH_LOOP} in a row in one "
                "slot): the supervisor cannot keep them running"
            )
            return Check(WORKERS, False, message, details={"alive": alive})
        return Check(WORKERS, True, details={"alive": alive, "workers": pool.size})

    def _worker_line(self, worker: Worker, probe: Probe, restarts: int) -> Check:
        name = f"worker-{worker.slot}"
        details = _details(worker, restarts)
        if probe is Probe.STARTUP:
            ok = worker.ready_once
        elif probe is Probe.LIVENESS:
            ok = worker.live
        else:
            ok = worker.ready
        message = "ok" if ok else _first_failure(worker, probe)
        return Check(name, ok, message, critical=False, details=details)
