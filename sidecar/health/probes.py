"""Every check of each probe: the lifecycle's, the event loop's, and the scheduled ones."""

from __future__ import annotations

from ..config import HealthConfig
from ..probe import Builtin, Check, Probe
from ..state import Lifecycle
from .loop_monitor import LoopMonitor
from .scheduler import CheckScheduler


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

    def checks(self, probe: Probe) -> list[Check]:
        """The checks of ``probe``, in display order."""
        lifecycle = self._lifecycle
        if probe is Probe.STARTUP:
            return lifecycle.startup_checks()
        if probe is Probe.LIVENESS:
            checks = lifecycle.liveness_checks()
            # A loop blocked during startup (a model loaded synchronously, say) is bounded
            # by the startup probe and lifespan.startup_timeout, not by a restart here.
            loop = self._loop_check(
                self._config.live_max_loop_lag,
                "health.live_max_loop_lag",
                enforced=lifecycle.startup_complete,
            )
        else:
            checks = lifecycle.readiness_checks()
            loop = self._loop_check(
                self._config.ready_max_loop_lag, "health.ready_max_loop_lag", enforced=True
            )
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
            return Check(Builtin.EVENT_LOOP, True, details=details)
        if not enforced:
            message = f"event loop blocked for {lag:.2f}s; not counted until startup completes"
            return Check(Builtin.EVENT_LOOP, True, message, details=details)
        return Check(
            Builtin.EVENT_LOOP,
            False,
            f"event loop blocked for {lag:.2f}s (more than {key}: {limit:g}s)",
            details=details,
        )
