"""The worker processes: started, watched, replaced, recycled and stopped.

Workers are started with ``exec`` (``python -m sidecar.workers.child``), never by forking
the supervisor: by the time a worker is replaced, the supervisor runs threads (the admin
server, asyncio's child watcher), and a forked copy would inherit their locks in whatever
state they were, with no thread to release them. A fresh interpreter inherits only two
descriptors: the listening socket and its end of the control channel.

What the pool does on its own, on a tick every half second:

- a worker that exits is replaced, after a backoff that grows while its slot keeps
  failing; one that exits with code 3 (its app failed to start) is fatal for the pod;
- a worker whose event loop is blocked beyond ``health.live_max_loop_lag`` (or that
  stopped reporting) gets the app thread's stack logged, then is killed and replaced;
- a worker past ``server.max_requests`` (plus its jitter) or ``server.max_worker_memory``
  is recycled: its replacement starts first, and only once that one is ready is the old
  one told to stop, so capacity never dips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..config import Config
from .channel import Channel, Message

logger = logging.getLogger("sidecar.workers")

EXIT_CONFIG, EXIT_STARTUP = 2, 3
TICK = 0.5
# A started worker that has sent no status for this long is as good as stuck: its
# admin thread, which reports, never waits for the app.
STATUS_STALE = 10.0
# Backoff between restarts of one slot: doubles from the first to the last while the
# slot's workers keep exiting before they are ready.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0
# Workers of a slot that exited one after another without becoming ready, after which
# the supervisor can no longer keep workers running: liveness fails.
CRASH_LOOP = 5
# What a worker gets to dump its stack before it is killed for being stuck.
DUMP_GRACE = 1.0


class Reason(StrEnum):
    """Why a worker was replaced (``sidecar_worker_restarts_total{reason}``)."""

    CRASH = "crash"
    STUCK = "stuck"
    MAX_REQUESTS = "max_requests"
    MEMORY = "memory"


@dataclass(eq=False)
class Worker:
    """One worker process and what it last reported."""

    slot: int
    process: asyncio.subprocess.Process
    channel: Channel
    spawned_at: float
    #: Recycle after this many requests (``server.max_requests`` plus jitter); 0: never.
    recycle_after: int
    status: Message = field(default_factory=dict)
    status_at: float = 0.0
    #: The result of its startup, when it reported a failure.
    startup_failure: Message | None = None
    ready_once: bool = False
    #: Set when it is being replaced and told to stop (it drains, then exits).
    retiring: Reason | None = None
    #: The worker started to take this one's place (recycling), and why.
    replacement: Worker | None = None
    replacement_reason: Reason = Reason.MAX_REQUESTS
    rss: int = 0
    exit_code: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ready(self) -> bool:
        return self.exit_code is None and bool(self.status.get("ready"))

    @property
    def live(self) -> bool:
        return self.exit_code is None and bool(self.status.get("live", True))

    @property
    def phase(self) -> str:
        if self.exit_code is not None:
            return "stopped" if self.exit_code == 0 else "failed"
        return str(self.status.get("phase", "starting"))


def _rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            return int(file.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE")


class Pool:
    """``server.workers`` worker processes sharing one listening socket."""

    def __init__(
        self,
        config: Config,
        worker_config: Callable[[int], dict[str, Any]],
        *,
        on_exit: Callable[[Worker], None],
        on_startup_failure: Callable[[Worker, str, str], None],
    ) -> None:
        self._config = config
        self._listen: socket.socket | None = None
        self._worker_config = worker_config
        self._on_exit = on_exit
        self._on_startup_failure = on_startup_failure
        server = config.server
        self.size = server.workers
        self._slots: dict[int, Worker] = {}
        self._leaving: set[Worker] = set()
        self._failures = dict.fromkeys(range(self.size), 0)  # consecutive, per slot
        self.restarts = dict.fromkeys(Reason, 0)
        #: Replacements per slot, for the probes' details and the status page.
        self.restarts_by_slot = dict.fromkeys(range(self.size), 0)
        self.stopping = False
        #: Set when a worker's app failed to start (exit code 3): the pod exits 3.
        self.fatal = asyncio.Event()
        self.fatal_failure: tuple[str, str] | None = None
        #: Set whenever the set of workers or their readiness may have changed.
        self.changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what the probes and metrics read ---------------------------------------------

    @property
    def workers(self) -> list[Worker]:
        """The current worker of each slot, in slot order."""
        return [self._slots[slot] for slot in sorted(self._slots)]

    @property
    def everyone(self) -> list[Worker]:
        """Every running process: current workers, replacements, and those leaving."""
        current = self.workers
        extra = [w.replacement for w in current if w.replacement is not None]
        return [*current, *extra, *self._leaving]

    @property
    def ready_count(self) -> int:
        return sum(1 for worker in self.workers if worker.ready)

    @property
    def started(self) -> bool:
        """Every slot has a worker that completed its startup."""
        return len(self._slots) == self.size and all(w.ready_once for w in self.workers)

    @property
    def crash_looping(self) -> bool:
        return any(count >= CRASH_LOOP for count in self._failures.values())

    # -- starting -----------------------------------------------------------------------

    async def start(self, listen: socket.socket) -> None:
        """Start one worker per slot on ``listen`` (returns once started, not ready)."""
        self._listen = listen
        for slot in range(self.size):
            self._slots[slot] = await self._spawn(slot)
        self._track(asyncio.ensure_future(self._tick()))

    async def _spawn(self, slot: int) -> Worker:
        listen = self._listen
        if listen is None:  # pragma: no cover - start() sets it first
            raise RuntimeError("the pool has no socket to share")
        parent, child = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sidecar.workers.child",
                str(child.fileno()),
                pass_fds=(listen.fileno(), child.fileno()),
            )
        finally:
            child.close()
        channel = await Channel.open(parent)
        server = self._config.server
        jitter = random.randint(0, server.max_requests_jitter) if server.max_requests else 0
        worker = Worker(
            slot=slot,
            process=process,
            channel=channel,
            spawned_at=time.monotonic(),
            recycle_after=server.max_requests + jitter if server.max_requests else 0,
        )
        await channel.send(
            {
                "type": "config",
                "slot": slot,
                "listen_fd": listen.fileno(),
                "config": self._worker_config(slot),
            }
        )
        self._track(asyncio.ensure_future(self._listen_to(worker)))
        self._track(asyncio.ensure_future(self._wait_for(worker)))
        logger.info("worker %d started (pid %d)", slot, process.pid)
        return worker

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen_to(self, worker: Worker) -> None:
        async for message in worker.channel.messages():
            kind = message.get("type")
            if kind == "status":
                worker.status, worker.status_at = message, time.monotonic()
                if message.get("started") and not worker.ready_once:
                    worker.ready_once = True
                    self._failures[worker.slot] = 0
                self.changed.set()
            elif kind == "startup" and not message.get("ok", True):
                worker.startup_failure = message

    async def _wait_for(self, worker: Worker) -> None:
        code = await worker.process.wait()
        worker.exit_code = code
        worker.exited.set()
        worker.channel.close()
        self._leaving.discard(worker)
        self._on_exit(worker)
        self.changed.set()
        if self.stopping or worker.retiring is not None:
            return
        failure = worker.startup_failure
        if code == EXIT_CONFIG and not worker.ready_once:
            # The configuration the supervisor handed over was refused: every new
            # worker would refuse it too.
            self.fatal_failure = (
                "config",
                f"worker {worker.slot} refused its configuration (exit code 2; its log says why)",
            )
            self.fatal.set()
            return
        if code == EXIT_STARTUP and failure is not None:
            reason, message = str(failure.get("reason")), str(failure.get("message"))
            self._on_startup_failure(worker, reason, message)
            self.fatal_failure = (reason, message)
            self.fatal.set()
            return
        if self._slots.get(worker.slot) is not worker:
            return  # a replacement that never took its slot: the next tick tries again
        self._count(worker.slot, Reason.CRASH)
        if not worker.ready_once:
            self._failures[worker.slot] += 1
        logger.warning(
            "worker %d (pid %d) exited with %s; replacing it",
            worker.slot,
            worker.pid,
            _describe(code),
            extra={"event": "worker_exit", "worker": worker.slot, "exit_code": code},
        )
        await self._respawn(worker.slot)

    async def _respawn(self, slot: int) -> None:
        failures = self._failures[slot]
        if failures:
            await asyncio.sleep(min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX))
        if not self.stopping:
            self._slots[slot] = await self._spawn(slot)

    # -- watching -----------------------------------------------------------------------

    async def _tick(self) -> None:
        lag_limit = self._config.health.live_max_loop_lag
        max_memory = self._config.server.max_worker_memory
        while not self.stopping:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for worker in list(self.workers):
                if worker.exit_code is not None or worker.retiring is not None:
                    continue
                worker.rss = _rss(worker.pid)
                replacement = worker.replacement
                if replacement is not None:
                    if replacement.exit_code is not None:
                        worker.replacement = None  # it died: try again on a later tick
                    elif replacement.ready:
                        self._hand_over(worker, replacement)
                    continue
                if worker.ready_once and self._stuck(worker, now, lag_limit):
                    self._track(asyncio.ensure_future(self._kill_stuck(worker)))
                    continue
                served = int(worker.status.get("served", 0))
                if worker.recycle_after and served >= worker.recycle_after:
                    await self._recycle(worker, Reason.MAX_REQUESTS, f"served {served} requests")
                elif max_memory and worker.rss > max_memory:
                    await self._recycle(worker, Reason.MEMORY, f"uses {worker.rss} bytes")

    def _stuck(self, worker: Worker, now: float, lag_limit: float) -> bool:
        if now - worker.status_at > STATUS_STALE:
            return True
        return lag_limit > 0 and float(worker.status.get("lag", 0.0)) > lag_limit

    async def _kill_stuck(self, worker: Worker) -> None:
        worker.retiring = Reason.STUCK
        self._count(worker.slot, Reason.STUCK)
        logger.error(
            "worker %d (pid %d) is stuck: its event loop is %.1fs behind "
            "(health.live_max_loop_lag); logging its stack, then replacing it",
            worker.slot,
            worker.pid,
            float(worker.status.get("lag", 0.0)),
            extra={"event": "worker_stuck", "worker": worker.slot},
        )
        with contextlib.suppress(ConnectionError):
            await worker.channel.send({"type": "dump"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.exited.wait(), DUMP_GRACE)
        _kill(worker)
        if worker.exit_code is None:
            self._leaving.add(worker)  # until its exit is seen
        if not self.stopping:
            self._slots[worker.slot] = await self._spawn(worker.slot)

    async def _recycle(self, worker: Worker, reason: Reason, why: str) -> None:
        logger.info(
            "worker %d (pid %d) %s (%s): starting its replacement",
            worker.slot,
            worker.pid,
            why,
            f"server.{'max_requests' if reason is Reason.MAX_REQUESTS else 'max_worker_memory'}",
            extra={"event": "worker_recycle", "worker": worker.slot, "reason": reason.value},
        )
        worker.replacement_reason = reason
        worker.replacement = await self._spawn(worker.slot)

    def _hand_over(self, old: Worker, new: Worker) -> None:
        """The replacement is ready: it takes the slot, the old worker drains and exits."""
        reason = old.replacement_reason
        old.replacement = None
        old.retiring = reason
        self._count(old.slot, reason)
        self._slots[old.slot] = new
        self._leaving.add(old)
        self._track(asyncio.ensure_future(_tell(old, {"type": "stop", "force": False})))
        self.changed.set()

    def _count(self, slot: int, reason: Reason) -> None:
        self.restarts[reason] += 1
        self.restarts_by_slot[slot] += 1

    # -- stopping -----------------------------------------------------------------------

    async def stop(self, *, force: bool = False) -> None:
        """Tell every worker to stop (``force``: skip what is left of its waits)."""
        self.stopping = True
        for worker in self.everyone:
            if worker.exit_code is None:
                await _tell(worker, {"type": "stop", "force": force})

    async def wait_stopped(self, deadline: float) -> bool:
        """Wait until every worker has exited or the loop's clock reaches ``deadline``.

        Workers still running then are killed. Returns whether all exited on their own.
        """
        pending = [w for w in self.everyone if w.exit_code is None]
        timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
        if pending:
            await asyncio.wait(
                [asyncio.ensure_future(w.exited.wait()) for w in pending], timeout=timeout
            )
        late = [w for w in pending if w.exit_code is None]
        for worker in late:
            logger.error(
                "worker %d (pid %d) did not stop in time; killing it", worker.slot, worker.pid
            )
            _kill(worker)
        for worker in late:
            await worker.exited.wait()
        for task in list(self._tasks):
            task.cancel()
        return not late

    def kill(self) -> None:
        """Kill every worker at once (a third signal)."""
        self.stopping = True
        for worker in self.everyone:
            _kill(worker)


async def _tell(worker: Worker, message: Message) -> None:
    with contextlib.suppress(ConnectionError):
        await worker.channel.send(message)


def _kill(worker: Worker) -> None:
    if worker.exit_code is None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGKILL)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"
