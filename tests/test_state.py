"""The lifecycle object on its own: transitions, drain clock and checks per phase."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from sidecar.admin import render_checks
from sidecar.state import Lifecycle, Phase, PhaseSpan, Transition


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_transitions_report_the_time_spent_in_the_previous_phase() -> None:
    clock = FakeClock()
    lifecycle = Lifecycle(drain_delay=5, clock=clock)
    seen: list[Transition] = []
    lifecycle.subscribe(seen.append)
    clock.now += 2.5
    lifecycle.mark_started()
    assert seen == [Transition(Phase.STARTING, Phase.READY, 2.5, "startup complete")]


def test_invalid_transition_raises() -> None:
    lifecycle = Lifecycle(drain_delay=0)
    lifecycle.transition(Phase.STOPPING)
    lifecycle.transition(Phase.STOPPED)
    with pytest.raises(RuntimeError, match="stopped -> ready"):
        lifecycle.transition(Phase.READY)


def test_drain_end_is_shared_by_every_caller() -> None:
    clock = FakeClock()
    lifecycle = Lifecycle(drain_delay=5, clock=clock)
    lifecycle.mark_started()
    first = lifecycle.begin_drain()
    clock.now += 3
    assert lifecycle.begin_drain() == first == 105.0
    assert lifecycle.phase is Phase.DRAINING


def test_drain_before_startup_ends_at_once_and_startup_then_does_not_report_ready() -> None:
    clock = FakeClock()
    lifecycle = Lifecycle(drain_delay=5, clock=clock)
    assert lifecycle.begin_drain() == clock.now
    lifecycle.mark_started()
    assert lifecycle.phase is Phase.DRAINING
    assert not all(c.ok for c in lifecycle.readiness_checks())


def test_failed_phase_fails_liveness_and_startup() -> None:
    lifecycle = Lifecycle(drain_delay=0)
    lifecycle.mark_startup_failed("the app raised: boom")
    lifecycle.transition(Phase.FAILED)
    status, body, _ = render_checks(
        "livez", lifecycle.liveness_checks(), verbose=True, as_json=False
    )
    assert status == 503
    assert "[-]lifespan failed: startup failed: the app raised: boom" in body
    status, body, _ = render_checks(
        "startupz", lifecycle.startup_checks(), verbose=False, as_json=False
    )
    assert (status, body) == (503, "startupz check failed: startup")


def test_stopping_and_stopped_fail_readiness_but_not_liveness() -> None:
    lifecycle = Lifecycle(drain_delay=0)
    lifecycle.mark_started()
    lifecycle.begin_drain()
    for phase in (Phase.STOPPING, Phase.STOPPED):
        lifecycle.transition(phase)
        ready = {c.name: c for c in lifecycle.readiness_checks()}
        assert not ready["draining"].ok
        assert ready["draining"].message == f"shutting down (phase {phase.value})"
        assert all(c.ok for c in lifecycle.liveness_checks())
        assert all(c.ok for c in lifecycle.startup_checks())


def test_listeners_hear_of_transitions_in_the_order_they_happened() -> None:
    # /prestop on the admin thread and a stop on the app loop race; whoever moved the
    # phase first must be reported first, or the last reported phase is a stale one.
    for _ in range(200):
        lifecycle = Lifecycle(drain_delay=5.0)
        lifecycle.mark_started()
        heard: list[Transition] = []
        gate = threading.Barrier(2)

        def listener(change: Transition, heard: list[Transition] = heard) -> None:
            if change.phase is Phase.DRAINING:
                time.sleep(0.0005)  # a slow listener widens the window a race needs
            heard.append(change)

        lifecycle.subscribe(listener)

        def drain(lifecycle: Lifecycle = lifecycle, gate: threading.Barrier = gate) -> None:
            gate.wait()
            lifecycle.begin_drain()

        thread = threading.Thread(target=drain)
        thread.start()
        gate.wait()
        # Stop right after the drain moved the phase, while its listener still runs.
        deadline = time.monotonic() + 10
        while lifecycle.phase is not Phase.DRAINING and time.monotonic() < deadline:
            pass
        lifecycle.transition(Phase.STOPPING)
        thread.join()
        for before, after in itertools.pairwise(heard):
            assert after.previous is before.phase, heard
        assert heard[-1].phase is lifecycle.phase


def test_the_timeline_gives_each_phase_its_start_duration_and_reason() -> None:
    clock, wall = FakeClock(), FakeClock()
    wall.now = 1_800_000_000.0
    lifecycle = Lifecycle(drain_delay=5, clock=clock, wall_clock=wall)
    clock.now += 2.5
    wall.now += 2.5
    lifecycle.mark_started()
    clock.now += 60
    wall.now += 60
    lifecycle.begin_drain()
    clock.now += 1.25
    timeline = lifecycle.timeline()
    assert timeline == [
        PhaseSpan(Phase.STARTING, 1_800_000_000.0, 2.5, "process started", current=False),
        PhaseSpan(Phase.READY, 1_800_000_002.5, 60.0, "startup complete", current=False),
        PhaseSpan(Phase.DRAINING, 1_800_000_062.5, 1.25, "drain started", current=True),
    ]
    clock.now += 1.0  # the current phase's duration runs on
    assert lifecycle.timeline()[-1].duration == 2.25
