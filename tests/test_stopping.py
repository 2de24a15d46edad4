"""Requests to stop and how they escalate (``sidecar.stopping``), without sockets.

The shutdown order itself (``stop_serving``) runs against real servers in
tests/test_runner.py and tests/serving/test_server.py; here: what each request sets.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from sidecar.state import Lifecycle
from sidecar.stopping import StopRequests, linger, until_drain_end


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def requests(
    *, drain_delay: float = 5.0, terminal: bool = False, aborts: list[int] | None = None
) -> tuple[StopRequests, Lifecycle]:
    lifecycle = Lifecycle(drain_delay=drain_delay, clock=Clock())
    lifecycle.mark_started()
    abort = (lambda signum: aborts.append(int(signum))) if aborts is not None else None
    stop = StopRequests(lifecycle, drain_delay, on_terminal=lambda: terminal, abort=abort)
    return stop, lifecycle


def flags(stop: StopRequests) -> tuple[bool, bool, bool]:
    return stop.stop.is_set(), stop.force.is_set(), stop.skip_delay.is_set()


def test_the_first_request_stops_the_second_forces(caplog: pytest.LogCaptureFixture) -> None:
    stop, _ = requests()
    assert flags(stop) == (False, False, False)
    stop.request()
    assert flags(stop) == (True, False, False)
    assert "second shutdown request" not in caplog.text
    stop.request()
    assert flags(stop) == (True, True, True)
    assert caplog.text.count("second shutdown request: skipping what is left of the drain") == 1
    stop.request()  # a third request changes nothing and says nothing new
    assert caplog.text.count("second shutdown request") == 1


def test_a_forced_request_skips_the_waits_at_once() -> None:
    stop, _ = requests()
    stop.request(force=True)
    assert flags(stop) == (True, True, True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_escalate_and_the_third_aborts(
    signum: signal.Signals, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sidecar")
    aborts: list[int] = []
    stop, _ = requests(aborts=aborts)
    stop.on_signal(signum)
    assert flags(stop) == (True, False, False)
    assert f"received {signum.name}" in caplog.text
    stop.on_signal(signum)
    assert flags(stop) == (True, True, True)
    assert aborts == []
    stop.on_signal(signum)
    assert aborts == [int(signum)]


def test_without_abort_a_third_signal_repeats_the_second() -> None:
    stop, _ = requests(aborts=None)
    for _ in range(4):
        stop.on_signal(signal.SIGTERM)
    assert flags(stop) == (True, True, True)


def test_ctrl_c_at_a_terminal_skips_only_the_drain_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sidecar")
    stop, _ = requests(terminal=True, drain_delay=60)
    stop.on_signal(signal.SIGINT)
    assert flags(stop) == (True, False, True)
    assert "received SIGINT from a terminal: skipping the 60s drain delay" in caplog.text


@pytest.mark.parametrize(
    ("signum", "terminal", "drain_delay", "draining"),
    [
        (signal.SIGTERM, True, 5.0, False),  # the kubelet's signal, even at a terminal
        (signal.SIGINT, False, 5.0, False),  # no person waiting
        (signal.SIGINT, True, 0.0, False),  # no delay to skip
        (signal.SIGINT, True, 5.0, True),  # a preStop hook already began the drain
    ],
)
def test_when_the_drain_delay_is_kept(
    signum: signal.Signals, terminal: bool, drain_delay: float, draining: bool
) -> None:
    stop, lifecycle = requests(terminal=terminal, drain_delay=drain_delay)
    if draining:
        lifecycle.begin_drain()
    stop.on_signal(signum)
    assert flags(stop) == (True, False, False)


def test_the_drain_delay_ends_on_the_lifecycles_clock() -> None:
    async def scenario() -> None:
        clock = Clock()
        lifecycle = Lifecycle(drain_delay=0.05, clock=clock)
        lifecycle.mark_started()
        skip = asyncio.Event()
        drain_end = lifecycle.begin_drain()
        waiting = asyncio.ensure_future(until_drain_end(lifecycle, drain_end, skip))
        # The loop's clock passes the delay, the lifecycle's does not: still waiting.
        await asyncio.wait((waiting,), timeout=0.2)
        assert not waiting.done()
        clock.now = drain_end
        await asyncio.wait_for(waiting, timeout=5)

    asyncio.run(scenario())


def test_skipping_ends_the_drain_delay_at_once() -> None:
    async def scenario() -> None:
        lifecycle = Lifecycle(drain_delay=3600, clock=Clock())
        lifecycle.mark_started()
        skip = asyncio.Event()
        waiting = asyncio.ensure_future(until_drain_end(lifecycle, lifecycle.begin_drain(), skip))
        await asyncio.sleep(0)
        assert not waiting.done()
        skip.set()
        await asyncio.wait_for(waiting, timeout=5)

    asyncio.run(scenario())


def test_linger_ends_when_told_and_not_at_all_without_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sidecar")

    async def scenario() -> None:
        until = asyncio.Event()
        await asyncio.wait_for(linger(0, "nothing to show", until=until), timeout=5)
        assert "nothing to show" not in caplog.text
        waiting = asyncio.ensure_future(linger(3600, "the app failed to start", until=until))
        await asyncio.sleep(0)
        assert not waiting.done()
        until.set()
        await asyncio.wait_for(waiting, timeout=5)
        await asyncio.wait_for(linger(3600, "already stopping", until=until), timeout=5)

    asyncio.run(scenario())
    assert (
        "the app failed to start; the admin port stays up for 3600s (lifespan.failure_linger)"
        in caplog.text
    )
    assert "already stopping" not in caplog.text
