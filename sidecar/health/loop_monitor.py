"""Event-loop lag: a heartbeat on the app's event loop, a watcher on the admin thread.

A blocked event loop cannot say that it is blocked: the heartbeat that would say so
cannot run. So the heartbeat only records when it ran (and how late), and the admin
thread, which keeps running, computes how long ago that was. The lag is therefore
known *while* the loop is blocked, which is when a probe needs it.

The heartbeat is one timer callback per interval (10 per second by default): a clock
read, a subtraction, a histogram count and two attribute stores, with no lock on that
path. ``bench/heartbeat.py`` measures what it costs (about 2 us per beat on uvloop).

For the status page the watcher also keeps the longest lag of each of the last
``HISTORY_SECONDS`` seconds, in a fixed-size buffer filled once a second on the admin
loop; the heartbeat does no more for it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

from ..config import HealthConfig
from ..metrics import LoopLagStats

logger = logging.getLogger("sidecar.health")

# "Recent" for the longest-stall gauge: longer than common scrape intervals (15-60 s),
# so a stall between two scrapes is still visible at the second.
RECENT_WINDOW = 60.0

# Heartbeats later than this are handed to the watcher; below it is scheduler jitter
# and only the histogram records it.
_LATE = 0.001

# The lag history: one sample per HISTORY_STEP seconds (the longest lag in it), the last
# five minutes of them.
HISTORY_STEP = 1.0
HISTORY_SECONDS = 300

# Frames shown in a stall's stack dump, innermost first: the blocking call is at the end.
_STACK_LIMIT = 40


class LoopMonitor:
    """Measure how far behind the app's event loop is, from outside that loop."""

    def __init__(
        self,
        config: HealthConfig,
        stats: LoopLagStats,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = config.heartbeat_interval
        self._dump_after = config.stack_dump_after
        self._dump_every = config.stack_dump_interval
        self._stats = stats
        self._clock = clock
        # Written by the app thread, read by the admin thread. Single attribute loads and
        # stores are atomic in CPython, so the heartbeat takes no lock.
        self._last_beat: float | None = None
        self._late: deque[float] = deque(maxlen=1024)  # append/popleft are thread-safe
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._thread_id: int | None = None
        # Readers' state. The admin thread is the usual reader, but a scrape through the
        # registry may come from any thread; the lock is never taken by the heartbeat.
        self._lock = threading.Lock()
        self._window: deque[tuple[float, float]] = deque()
        self._stall_beat: float | None = None  # the last heartbeat before a stall
        self._stall_peak = 0.0
        self._stall_logged = False
        self._last_dump = float("-inf")
        self._unlogged = 0
        self._history: deque[float] = deque(maxlen=HISTORY_SECONDS)
        self._peak = 0.0  # the longest lateness drained since the last history sample
        if self.enabled:
            stats.sampler = self.sample

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    # -- the heartbeat (app thread) -------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the heartbeat on ``loop``; call from the thread that runs it."""
        if not self.enabled or self._handle is not None:
            return
        self._loop = loop
        self._thread_id = threading.get_ident()
        now = self._clock()
        self._due = now + self.interval
        self._last_beat = now
        self._handle = loop.call_later(self.interval, self._beat)

    def stop(self) -> None:
        """Stop the heartbeat; the lag reads 0 from now on (the loop is going away)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        self._last_beat = None

    def _beat(self) -> None:
        now = self._clock()
        late = now - self._due
        if late < 0.0:  # the loop's timer clock may run a little ahead of ours
            late = 0.0
        self._stats.observe(late)
        if late >= _LATE:
            self._late.append(late)
        self._last_beat = now
        self._due = now + self.interval
        loop = self._loop
        if loop is not None and self._handle is not None:
            self._handle = loop.call_later(self.interval, self._beat)

    # -- readings (admin thread) ------------------------------------------------------------

    def current_lag(self, now: float | None = None) -> float:
        """Seconds the loop is behind now: time since the heartbeat was due, else 0."""
        last = self._last_beat
        if last is None:
            return 0.0
        if now is None:
            now = self._clock()
        lag = now - last - self.interval
        return lag if lag > 0.0 else 0.0

    def longest_recent(self, now: float | None = None) -> float:
        """The longest lag seen in the last ``RECENT_WINDOW`` seconds, or in progress."""
        if now is None:
            now = self._clock()
        with self._lock:
            self._drain(now)
            longest = self.current_lag(now)
            for when, lag in self._window:
                if when >= now - RECENT_WINDOW and lag > longest:
                    longest = lag
        return longest

    def sample(self) -> tuple[float, float]:
        """Return (current lag, longest recent stall) for the metrics."""
        now = self._clock()
        return self.current_lag(now), self.longest_recent(now)

    def lag_history(self) -> list[float]:
        """The longest lag of each of the last seconds (``HISTORY_STEP``), oldest first."""
        with self._lock:
            return list(self._history)

    # -- the watcher (admin loop) -----------------------------------------------------------

    async def watch(self) -> None:
        """Log stalls that pass ``stack_dump_after`` and keep the lag history, until cancelled.

        Nothing else needs a timer: probes and scrapes compute the lag when asked. The
        history takes a sample every ``HISTORY_STEP``; no stall can pass the dump
        threshold before the heartbeat is that late, so the watcher sleeps until the
        sooner of the two, waking about once a second on a healthy loop rather than
        polling; only during a logged stall does it look every interval for its end.
        """
        if not self.enabled:
            return
        dumps = self._dump_after > 0
        due = self._clock() + HISTORY_STEP
        while True:
            now = self._clock()
            wait = due - now
            if dumps:
                last = self._last_beat
                if self._stall_beat is not None or last is None:
                    wait = min(wait, self.interval)
                else:
                    wait = min(wait, last + self.interval + self._dump_after - now)
            # A timer may fire a hair early; never spin on a deadline that just passed.
            await asyncio.sleep(max(wait, 0.001))
            try:
                now = self._clock()
                with self._lock:
                    if dumps:
                        self._tick(now)
                    if now + 0.001 >= due:
                        due = self._record_history(now, due)
            except Exception:  # the watcher must outlive a bug in one tick
                logger.exception("event-loop watcher failed")

    def _record_history(self, now: float, due: float) -> float:
        """Store the longest lag since the last sample; return when the next one is due.

        Call with ``_lock`` held. Seconds in which the admin thread could not run (another
        thread held the GIL) each get this sample: the longest lag is an upper bound for
        every one of them.
        """
        self._drain(now)
        peak = max(self._peak, self.current_lag(now))
        self._peak = 0.0
        steps = 1 + max(int((now - due) // HISTORY_STEP), 0)
        self._history.extend([peak] * min(steps, HISTORY_SECONDS))
        return due + steps * HISTORY_STEP

    def _drain(self, now: float) -> float:
        """Move late heartbeats into the window; return the latest one's lateness.

        Call with ``_lock`` held.
        """
        latest = 0.0
        while self._late:
            latest = self._late.popleft()
            self._window.append((now, latest))
            if latest > self._peak:
                self._peak = latest
        while self._window and self._window[0][0] < now - RECENT_WINDOW:
            self._window.popleft()
        return latest

    def _tick(self, now: float) -> None:
        late = self._drain(now)
        lag = self.current_lag(now)
        if lag > 0.0:
            self._window.append((now, lag))  # a stall in progress; its heartbeat is late
        last = self._last_beat
        if self._stall_beat is not None:
            if last is not None and last == self._stall_beat:
                self._stall_peak = max(self._stall_peak, lag)
                return
            # The heartbeat ran again: its lateness is the length of the stall.
            length = max(self._stall_peak, late)
            if self._stall_logged:
                logger.info(
                    "event loop responsive again after a %.2fs stall",
                    length,
                    extra={"event": "loop_stall_end", "lag_s": round(length, 3)},
                )
            self._stall_beat = None
        if self._dump_after > 0 and lag >= self._dump_after and last is not None:
            self._stall_beat, self._stall_peak = last, lag
            self._stall_logged = now - self._last_dump >= self._dump_every
            if self._stall_logged:
                self._last_dump = now
                self._dump(lag)
            else:
                self._unlogged += 1

    def dump_now(self) -> None:
        """Log the app thread's stack now, whatever the lag (the supervisor asks)."""
        with self._lock:
            self._dump(self.current_lag())

    def _dump(self, lag: float) -> None:
        """Log where the app thread is: the line that blocks the loop."""
        frame = sys._current_frames().get(self._thread_id or -1)
        if frame is None:
            stack = "  (the app thread's stack is not available)"
        else:
            stack = "".join(traceback.format_stack(frame, limit=_STACK_LIMIT)).rstrip()
        skipped = (
            f" ({self._unlogged} stall(s) since the last dump not shown: "
            "health.stack_dump_interval)"
            if self._unlogged
            else ""
        )
        self._unlogged = 0
        logger.warning(
            "event loop blocked for %.2fs so far%s; the app thread is at:\n%s",
            lag,
            skipped,
            stack,
            extra={"event": "loop_stall", "lag_s": round(lag, 3)},
        )
