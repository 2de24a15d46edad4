"""Event-loop stall detection: a blocked app loop fails readiness, then liveness.

The app blocks its own event loop with a blocking call in an async handler; the test
waits for the sidecar's stack dump (logged once the stall passed ``stack_dump_after``)
and for "responsive again", so nothing here sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import pytest

from sidecar.config import HealthConfig
from sidecar.health import LoopMonitor
from sidecar.health.loop_monitor import HISTORY_SECONDS, HISTORY_STEP
from sidecar.metrics import LoopLagStats

from .. import apps
from ..conftest import LOOPBACK, WAIT, LogWatch, Reply, fetch
from ..metrics_util import scrape_samples

# Probes must answer well inside the kubelet's 1 s timeout while the app loop is stuck.
PROMPT = 0.25


def lag_limits(*, ready: float, live: float, dump: float) -> dict[str, Any]:
    """Short thresholds; the stack dump (at ``dump``) tells the test the lag is past them."""
    return {
        "health__heartbeat_interval": 0.02,
        "health__ready_max_loop_lag": ready,
        "health__live_max_loop_lag": live,
        "health__stack_dump_after": dump,
        "health__stack_dump_interval": 0,
    }


def timed(url: str, **kwargs: Any) -> tuple[Reply, float]:
    began = time.monotonic()
    reply = fetch(url, timeout=5, **kwargs)
    return reply, time.monotonic() - began


def block(running: Any, app: apps.BlocksLoop) -> threading.Thread:
    request = threading.Thread(target=fetch, args=(running.app("/block"),), daemon=True)
    request.start()
    assert app.entered.wait(WAIT)
    return request


def test_a_blocked_loop_fails_readiness_while_probes_and_metrics_answer(
    run_sidecar: Any, logs: LogWatch
) -> None:
    app = apps.BlocksLoop()
    running = run_sidecar(app, **lag_limits(ready=0.2, live=30, dump=0.3))
    assert fetch(running.admin("/readyz")).status == 200
    request = block(running, app)
    try:
        dump = logs.wait_for("event loop blocked for")  # the loop is 0.3 s behind by now
        ready, ready_s = timed(running.admin("/readyz?verbose"))
        live, live_s = timed(running.admin("/livez"))
        metrics, metrics_s = timed(running.admin("/metrics"))
    finally:
        app.release()
        request.join(WAIT)
    assert (ready.status, live.status, metrics.status) == (503, 200, 200)
    assert max(ready_s, live_s, metrics_s) < PROMPT
    assert "[-]event-loop failed: event loop blocked for " in ready.text
    assert "s (more than health.ready_max_loop_lag: 0.2s)" in ready.text
    assert ready.text.endswith("readyz check failed\n")
    during = scrape_samples(metrics.text)
    assert during[("sidecar_event_loop_current_lag_seconds", ())] >= 0.3
    # The stack dump shows the line that blocks the loop.
    assert "self._released.wait(30)" in dump
    assert "tests/apps.py" in dump

    logs.wait_for("event loop responsive again after a")
    assert fetch(running.admin("/readyz")).status == 200
    after = scrape_samples(fetch(running.admin("/metrics")).text)
    assert after[("sidecar_event_loop_current_lag_seconds", ())] < 0.2
    assert after[("sidecar_event_loop_longest_stall_seconds", ())] >= 0.3
    # The heartbeat that ran after the stall was over 0.25 s late: in the histogram.
    count = after[("sidecar_event_loop_lag_seconds_count", ())]
    assert after[("sidecar_event_loop_lag_seconds_bucket", (("le", "0.25"),))] < count


def test_a_longer_block_fails_liveness_and_it_recovers(run_sidecar: Any, logs: LogWatch) -> None:
    app = apps.BlocksLoop()
    running = run_sidecar(app, **lag_limits(ready=0.1, live=0.3, dump=0.4))
    request = block(running, app)
    try:
        logs.wait_for("event loop blocked for")
        live, live_s = timed(running.admin("/livez?verbose"))
        ready = fetch(running.admin("/readyz"))
        healthz = fetch(running.admin("/healthz"))
    finally:
        app.release()
        request.join(WAIT)
    assert live_s < PROMPT
    assert (live.status, ready.status, healthz.status) == (503, 503, 503)
    assert "s (more than health.live_max_loop_lag: 0.3s)" in live.text
    logs.wait_for("event loop responsive again after a")
    assert fetch(running.admin("/livez")).status == 200
    assert fetch(running.admin("/readyz")).status == 200


def test_a_loop_blocked_during_startup_does_not_fail_liveness(
    run_sidecar: Any, logs: LogWatch
) -> None:
    app = apps.BlocksLoop(during_startup=True)
    running = run_sidecar(app, wait=False, **lag_limits(ready=0.1, live=0.2, dump=0.3))
    try:
        logs.wait_for("event loop blocked for")
        live = fetch(running.admin("/livez"), headers={"Accept": "application/json"})
        startup = fetch(running.admin("/startupz")).status
    finally:
        app.release()
    # The startup probe and lifespan.startup_timeout bound a slow start, not a restart.
    assert live.status == 200
    loop = next(c for c in live.json()["checks"] if c["name"] == "event-loop")
    assert loop["ok"] is True
    assert "not counted until startup completes" in loop["message"]
    assert loop["details"]["lag_s"] > 0.2
    assert startup == 503
    running.wait_serving()


def test_loop_checks_can_be_turned_off(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app(), health__ready_max_loop_lag=0)
    assert "event-loop" not in fetch(running.admin("/readyz?verbose")).text
    assert "[+]event-loop ok" in fetch(running.admin("/livez?verbose")).text

    running = run_sidecar(apps.lifespan_app(), health__heartbeat_interval=0)
    assert fetch(running.admin("/livez?verbose")).text == (
        "[+]ping ok\n[+]lifespan ok\nlivez check passed\n"
    )
    assert "sidecar_event_loop" not in fetch(running.admin("/metrics")).text


def test_a_stall_under_uvloop_in_the_real_cli(cli: Any) -> None:
    env = {
        "SIDECAR_SERVER_LOOP": "uvloop",
        "SIDECAR_HEALTH_HEARTBEAT_INTERVAL": "0.02",
        "SIDECAR_HEALTH_READY_MAX_LOOP_LAG": "0.2",
        "SIDECAR_HEALTH_STACK_DUMP_AFTER": "0.3",
    }
    proc = cli("run", "cli_apps:blocks_loop", *LOOPBACK, "--drain-delay", "0", env=env)
    proc.wait_serving()
    request = threading.Thread(target=fetch, args=(proc.app_url + "/block",), daemon=True)
    request.start()
    proc.wait_line("event loop blocked for")
    # The handler sleeps 1.5 s; the dump came at 0.3 s, so the loop is still stuck.
    ready, ready_s = timed(proc.admin_url + "/readyz")
    proc.wait_line(r'cli_apps\.py", line \d+, in blocks_loop')
    request.join(WAIT)
    proc.wait_line("event loop responsive again after a")
    assert (ready.status, ready_s < PROMPT) == (503, True)
    assert fetch(proc.admin_url + "/readyz").status == 200
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


# -- the monitor on its own, on a fake clock ------------------------------------------------


def tick(monitor: LoopMonitor, now: float) -> None:
    """One step of the watcher, as ``watch()`` takes it."""
    with monitor._lock:
        monitor._tick(now)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lag_stall_length_and_rate_limited_stack_dumps(logs: LogWatch) -> None:
    clock = FakeClock()
    config = HealthConfig(heartbeat_interval=0.1, stack_dump_after=1.0, stack_dump_interval=60)
    monitor = LoopMonitor(config, LoopLagStats(), clock=clock)
    loop = asyncio.new_event_loop()  # never runs: the test plays the heartbeat itself
    try:
        monitor.start(loop)
        clock.now += 0.1
        monitor._beat()  # on time
        assert monitor.current_lag() == 0.0
        clock.now += 1.3  # the next heartbeat is 1.2 s overdue
        assert monitor.current_lag() == pytest.approx(1.2)
        tick(monitor, clock.now)
        assert len(logs.messages("event loop blocked for 1.20s so far; the app")) == 1
        assert "test_loop_monitor.py" in logs.messages("event loop blocked")[0]
        clock.now += 0.2
        monitor._beat()  # the stall ends: this heartbeat was 1.4 s late
        tick(monitor, clock.now)
        assert logs.messages("responsive again") == [
            "event loop responsive again after a 1.40s stall"
        ]
        assert monitor.longest_recent() == pytest.approx(1.4)
        # A second stall within stack_dump_interval: no dump, and no "responsive" line.
        clock.now += 2.0
        tick(monitor, clock.now)
        monitor._beat()
        tick(monitor, clock.now)
        assert len(logs.messages("event loop blocked")) == 1
        assert len(logs.messages("responsive again")) == 1
        # A minute later the next dump says how many stalls went unlogged.
        clock.now += 61.0
        tick(monitor, clock.now)
        assert "(1 stall(s) since the last dump not shown" in logs.messages("blocked")[-1]
        # The window forgets stalls older than a minute.
        monitor._beat()
        clock.now += 0.05
        assert monitor.longest_recent() == pytest.approx(60.9)
    finally:
        monitor.stop()
        loop.close()
    assert monitor.current_lag() == 0.0  # stopped: the loop is gone, nothing to report


def record(monitor: LoopMonitor, now: float, due: float) -> float:
    """The watcher's once-a-second sample, as ``watch()`` takes it."""
    with monitor._lock:
        return monitor._record_history(now, due)


def test_the_lag_history_keeps_the_longest_lag_of_each_second() -> None:
    clock = FakeClock()
    config = HealthConfig(heartbeat_interval=0.1, stack_dump_after=1.0, stack_dump_interval=60)
    monitor = LoopMonitor(config, LoopLagStats(), clock=clock)
    loop = asyncio.new_event_loop()  # never runs: the test plays the heartbeat itself
    try:
        monitor.start(loop)
        due = clock.now + HISTORY_STEP
        for _ in range(10):  # a second of heartbeats on time
            clock.now += 0.1
            monitor._beat()
        due = record(monitor, clock.now, due)
        clock.now += 0.45
        monitor._beat()  # 0.35 s late: a short stall, over before the next sample
        for _ in range(5):
            clock.now += 0.1
            monitor._beat()
        clock.now = due
        due = record(monitor, clock.now, due)
        clock.now = due  # no heartbeat for a second: a stall in progress, 0.95 s so far
        due = record(monitor, clock.now, due)
        clock.now += 0.5
        monitor._beat()  # the stall ends 1.45 s late
        clock.now = due
        due = record(monitor, clock.now, due)
        # The next stall also keeps the admin thread from sampling for 2.5 s (a thread
        # holding the GIL): each second it missed gets the lag seen when it ran again.
        clock.now = due + 2.5
        due = record(monitor, clock.now, due)
        assert monitor.lag_history() == pytest.approx([0.0, 0.35, 0.95, 1.45, 3.9, 3.9, 3.9])
        assert due == pytest.approx(clock.now + 0.5)  # samples stay on whole seconds
        # However long the gap, the history stays the last HISTORY_SECONDS seconds.
        record(monitor, clock.now + 10 * HISTORY_SECONDS, due)
        assert len(monitor.lag_history()) == HISTORY_SECONDS
    finally:
        monitor.stop()
        loop.close()


def test_the_watcher_keeps_the_history_with_stack_dumps_off() -> None:
    config = HealthConfig(heartbeat_interval=0.05, stack_dump_after=0)
    monitor = LoopMonitor(config, LoopLagStats())

    async def watch() -> set[asyncio.Task[None]]:
        monitor.start(asyncio.get_running_loop())
        watcher = asyncio.create_task(monitor.watch())
        try:
            # Two samples are due within this time (one a second).
            done, _ = await asyncio.wait({watcher}, timeout=2.5 * HISTORY_STEP)
        finally:
            watcher.cancel()
            monitor.stop()
        return done

    assert asyncio.run(watch()) == set()  # with nothing to dump, the watcher still runs
    history = monitor.lag_history()
    assert len(history) >= 2
    assert all(lag < 0.5 for lag in history)
