"""Lifecycle phases and availability: the one mutable object shared by both threads.

The app thread moves the phase forward; the admin thread reads it to answer probes and
starts the preStop drain. Every access goes through one lock. Listeners (the log) are
called outside it, but a second lock orders whole transitions, listeners included, so
they are told of transitions in the order the transitions happened.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from .probe import Builtin, Check


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class Transition:
    """A phase change: ``duration`` is the time spent in ``previous``, in seconds."""

    previous: Phase
    phase: Phase
    duration: float
    detail: str


@dataclass(frozen=True)
class PhaseSpan:
    """A phase the process was in: since when (Unix time), how long, and why it began.

    For the current phase ``duration`` is the time spent in it so far.
    """

    phase: Phase
    started_at: float
    duration: float
    reason: str
    current: bool


Listener = Callable[[Transition], None]

logger = logging.getLogger("sidecar")


def log_transition(change: Transition) -> None:
    """Log a transition with the time spent in the previous phase (a ``Listener``)."""
    logger.info(
        "phase %s -> %s after %.3fs%s",
        change.previous.value,
        change.phase.value,
        change.duration,
        f" ({change.detail})" if change.detail else "",
        extra={
            "event": "transition",
            "phase": change.phase.value,
            "previous": change.previous.value,
            "duration_s": round(change.duration, 6),
        },
    )


# Phases kept for the timeline. A run passes through at most five, so this only bounds
# what a bug could grow.
TIMELINE_LENGTH = 32

# Phases a lifecycle may move to from each phase; anything else is a bug in the caller.
_ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.READY, Phase.DRAINING, Phase.STOPPING, Phase.FAILED}),
    Phase.READY: frozenset({Phase.DRAINING, Phase.STOPPING, Phase.FAILED}),
    Phase.DRAINING: frozenset({Phase.STOPPING, Phase.FAILED}),
    Phase.STOPPING: frozenset({Phase.STOPPED, Phase.FAILED}),
    Phase.STOPPED: frozenset(),
    Phase.FAILED: frozenset(),
}


class Lifecycle:
    """The process's phase, startup outcome, drain clock and lifespan health."""

    def __init__(
        self,
        *,
        drain_delay: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` measures durations (the drain clock); ``wall_clock`` dates the phases."""
        self._lock = threading.Lock()
        # Held from a change through its listeners (reentrant: a listener may read state).
        self._order = threading.RLock()
        self._clock = clock
        self._drain_delay = drain_delay
        self._phase = Phase.STARTING
        self._since = clock()
        self._started_at = self._since
        self._startup_complete = False
        self._startup_error: str | None = None
        self._drain_started: float | None = None
        self._lifespan_crash: str | None = None
        self._listeners: list[Listener] = []
        self._wall_clock = wall_clock
        # (phase, Unix time, this lifecycle's clock, reason) of each phase entered
        self._timeline: deque[tuple[Phase, float, float, str]] = deque(
            [(self._phase, wall_clock(), self._since, "process started")], maxlen=TIMELINE_LENGTH
        )

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` on every transition (from whichever thread makes it)."""
        self._listeners.append(listener)

    @property
    def phase(self) -> Phase:
        with self._lock:
            return self._phase

    @property
    def startup_complete(self) -> bool:
        with self._lock:
            return self._startup_complete

    def _move(self, phase: Phase, detail: str = "") -> Transition | None:
        """Change phase under the lock; the caller notifies listeners after releasing it."""
        if phase is self._phase:
            return None
        if phase not in _ALLOWED[self._phase]:
            raise RuntimeError(f"invalid lifecycle transition {self._phase.value} -> {phase.value}")
        now = self._clock()
        change = Transition(self._phase, phase, now - self._since, detail)
        self._phase, self._since = phase, now
        self._timeline.append((phase, self._wall_clock(), now, detail))
        return change

    def _notify(self, change: Transition | None) -> None:
        if change is not None:
            for listener in self._listeners:
                listener(change)

    def transition(self, phase: Phase, detail: str = "") -> None:
        """Move to ``phase``; a no-op when already there."""
        with self._order:
            with self._lock:
                change = self._move(phase, detail)
            self._notify(change)

    def mark_started(self) -> None:
        """Record that startup completed; become READY unless a drain already began."""
        with self._order:
            with self._lock:
                self._startup_complete = True
                change = None
                if self._phase is Phase.STARTING:
                    target = Phase.READY if self._drain_started is None else Phase.DRAINING
                    change = self._move(target, "startup complete")
            self._notify(change)

    def mark_startup_failed(self, message: str) -> None:
        """Record the last startup failure (shown on probes while retrying or failing)."""
        with self._lock:
            self._startup_error = message

    def mark_lifespan_crashed(self, message: str) -> None:
        """Record that the app's lifespan task died after startup completed."""
        with self._lock:
            self._lifespan_crash = message

    def begin_drain(self) -> float:
        """Start the drain if none is running; return its end on this lifecycle's clock.

        Every caller (preStop, SIGTERM, a second preStop) gets the same end time, so
        concurrent drains are one drain. Before startup completes nothing is routed
        here yet, so the drain ends at once.
        """
        with self._order:
            with self._lock:
                now = self._clock()
                change = None
                if self._drain_started is None:
                    self._drain_started = now
                    if self._phase is Phase.READY:
                        change = self._move(Phase.DRAINING, "drain started")
                if not self._startup_complete or self._phase not in (Phase.READY, Phase.DRAINING):
                    end = now
                else:
                    end = self._drain_started + self._drain_delay
            self._notify(change)
        return end

    @property
    def drain_started(self) -> float | None:
        with self._lock:
            return self._drain_started

    def clock(self) -> float:
        return self._clock()

    def timeline(self) -> list[PhaseSpan]:
        """The phases so far, oldest first, the current one last with its time so far."""
        with self._lock:
            entries = list(self._timeline)
            now = self._clock()
        ends = [since for _, _, since, _ in entries[1:]] + [now]
        return [
            PhaseSpan(phase, started_at, end - since, reason, current=index == len(entries) - 1)
            for index, ((phase, started_at, since, reason), end) in enumerate(
                zip(entries, ends, strict=True)
            )
        ]

    # -- probe checks -------------------------------------------------------------------

    def liveness_checks(self) -> list[Check]:
        """Is the process healthy? (a failure tells the kubelet to restart it)."""
        with self._lock:
            checks = [Check(Builtin.PING, True)]
            if self._lifespan_crash is not None:
                checks.append(
                    Check(Builtin.LIFESPAN, False, f"lifespan task crashed: {self._lifespan_crash}")
                )
            elif self._phase is Phase.FAILED:
                checks.append(
                    Check(
                        Builtin.LIFESPAN,
                        False,
                        f"startup failed: {self._startup_error or 'unknown'}",
                    )
                )
            else:
                checks.append(Check(Builtin.LIFESPAN, True))
            return checks

    def readiness_checks(self) -> list[Check]:
        """Should traffic be routed here now?"""
        with self._lock:
            return [Check(Builtin.PING, True), self._startup_check(), self._draining_check()]

    def startup_checks(self) -> list[Check]:
        """Has startup completed?"""
        with self._lock:
            return [Check(Builtin.PING, True), self._startup_check()]

    def _startup_check(self) -> Check:
        if self._startup_complete:
            return Check(Builtin.STARTUP, True)
        if self._phase is Phase.FAILED:
            return Check(
                Builtin.STARTUP, False, f"startup failed: {self._startup_error or 'unknown'}"
            )
        elapsed = self._clock() - self._started_at
        message = f"startup in progress for {elapsed:.1f}s"
        if self._startup_error is not None:
            message += f"; last attempt failed: {self._startup_error}"
        return Check(Builtin.STARTUP, False, message)

    def _draining_check(self) -> Check:
        if self._phase in (Phase.STARTING, Phase.READY) and self._drain_started is None:
            return Check(Builtin.DRAINING, True)
        if self._drain_started is not None and self._phase is Phase.DRAINING:
            since = self._clock() - self._drain_started
            return Check(Builtin.DRAINING, False, f"draining for {since:.1f}s")
        return Check(Builtin.DRAINING, False, f"shutting down (phase {self._phase.value})")
