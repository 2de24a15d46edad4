"""Stopping: the requests to stop and how they escalate, and the app port's shutdown order.

The first SIGTERM or SIGINT (or a shutdown request from elsewhere) begins the graceful
shutdown. A second request skips what is left of the waits (``force``). A third signal
ends the process at once: the owner's ``abort`` says what it cuts and exits with
``128 + signum``. A first SIGINT from a terminal (Ctrl-C: a person waits, and no load
balancer routes here) skips the drain delay only, and says so; in-flight requests still
finish. Everything here runs on the event loop's thread.

``stop_serving`` is the one shutdown order of the app port; the runner calls it, then
runs lifespan shutdown. A supervisor of workers has its own (``workers.supervisor``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from .aio import first_of
from .config import ShutdownConfig
from .serving import AppServer
from .state import Lifecycle, Phase

logger = logging.getLogger("sidecar")


class StopRequests:
    """Count the requests to stop and set the events the shutdown order waits on."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        drain_delay: float,
        *,
        on_terminal: Callable[[], bool],
        abort: Callable[[signal.Signals], None] | None,
    ) -> None:
        """``on_terminal`` tells whether a person at a terminal started the process;
        ``abort`` ends it on a third signal (without it, a third repeats the second)."""
        self._lifecycle = lifecycle
        self._drain_delay = drain_delay
        self._on_terminal = on_terminal
        self._abort = abort
        self._signals = 0
        # asyncio.Event binds to a loop on first use, so these can be made before it runs.
        #: Set by the first request: the shutdown begins.
        self.stop = asyncio.Event()
        #: Set by the second: skip what is left of every wait.
        self.force = asyncio.Event()
        #: Set to end the drain delay early (Ctrl-C at a terminal, or ``force``).
        self.skip_delay = asyncio.Event()

    def request(self, force: bool = False) -> None:
        """Begin the graceful shutdown; a second request (or ``force``) cuts it short."""
        if self.stop.is_set() or force:
            if not self.force.is_set():
                logger.warning("second shutdown request: skipping what is left of the drain")
            self.force.set()
            self.skip_delay.set()
        self.stop.set()

    def on_signal(self, signum: signal.Signals) -> None:
        """A SIGTERM or SIGINT arrived (the loop's signal handler)."""
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals >= 3 and self._abort is not None:
            logger.info("received %s", name)
            self._abort(signum)
            return
        if (
            signum == signal.SIGINT
            and not self.stop.is_set()
            and self._drain_delay > 0
            and self._lifecycle.drain_started is None
            and self._on_terminal()
        ):
            logger.info(
                "received SIGINT from a terminal: skipping the %gs drain delay "
                "(no load balancer to wait for); in-flight requests still finish",
                self._drain_delay,
            )
            self.skip_delay.set()
        else:
            logger.info("received %s", name)
        self.request()


async def linger(seconds: float, why: str, *, until: asyncio.Event) -> None:
    """Keep the process (and its admin port) up for ``seconds`` or until ``until`` is set,
    so that Prometheus scrapes what ``why`` says happened (``lifespan.failure_linger``)."""
    if seconds <= 0 or until.is_set():
        return
    logger.info(
        "%s; the admin port stays up for %gs (lifespan.failure_linger) so that "
        "Prometheus can scrape it",
        why,
        seconds,
    )
    await first_of(until.wait(), deadline=asyncio.get_running_loop().time() + seconds)


async def until_drain_end(lifecycle: Lifecycle, drain_end: float, skip: asyncio.Event) -> None:
    """Wait until the drain delay has ended on the lifecycle's clock, or ``skip`` is set.

    The loop's clock may run a hair behind the lifecycle's: the wait ends on the clock
    that defines the drain.
    """
    loop = asyncio.get_running_loop()
    left = drain_end - lifecycle.clock()
    while left > 0 and not skip.is_set():
        await first_of(skip.wait(), deadline=loop.time() + left)
        left = drain_end - lifecycle.clock()


async def stop_serving(
    server: AppServer, lifecycle: Lifecycle, shutdown: ShutdownConfig, requests: StopRequests
) -> int:
    """Drain and stop the app port in the one shutdown order; return the requests cut.

    Not ready; keep serving for what is left of the drain delay; end streams; with
    ``drain_mode: idle`` wait for in-flight requests before closing the listener; close
    it; let what runs finish until the graceful deadline; cut what is left
    (``serving.CUT_GRACE``); close every connection. ``requests.force`` cuts each wait
    short. The deadlines are fixed once, when this begins: nothing waits twice.
    """
    loop = asyncio.get_running_loop()
    force, skip = requests.force, requests.skip_delay
    # A preStop hook may have started the drain already: only what is left of the
    # delay is waited for. Both deadlines are fixed now; a skipped delay counts as
    # over, so the graceful timeout starts at once.
    drain_end = lifecycle.begin_drain()  # on the lifecycle's clock
    left = 0.0 if skip.is_set() else drain_end - lifecycle.clock()
    deadline = loop.time() + max(left, 0.0) + shutdown.graceful_timeout
    if left > 0:
        # Keep serving while load balancers stop routing here.
        logger.info("draining: serving for %.1fs more before closing the listener", left)
        await until_drain_end(lifecycle, drain_end, skip)
    server.end_streams()
    if shutdown.drain_mode == "idle" and server.in_flight and not force.is_set():
        logger.info(
            "draining: %d request(s) in flight; closing the listener once they finish",
            server.in_flight,
        )
        await server.wait_idle(deadline, cut_short=force, requests_only=True)
    lifecycle.transition(Phase.STOPPING, f"{server.in_flight} request(s) in flight")
    server.close_listener()
    if not force.is_set():
        await server.wait_idle(deadline, cut_short=force)
    aborted = await server.cut() if server.busy else 0
    await server.close()
    return aborted
