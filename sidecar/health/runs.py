"""One run of a check, wherever it runs: the app's loop, the admin loop or a thread.

Each run delivers exactly one ``Outcome`` to the admin loop, whether the check passed,
failed, raised, was cancelled at its timeout, or never started because its loop was
blocked or gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import CheckFailed
from .definition import CheckDefinition, CheckFunction


@dataclass(frozen=True)
class Outcome:
    """How one run ended: passed, or failed with a reason."""

    ok: bool
    error: str | None = None


def _judge(result: object) -> Outcome:
    if result is False:
        return Outcome(False, "the check returned False")
    return Outcome(True)


def _failure(exc: BaseException) -> Outcome:
    if isinstance(exc, CheckFailed):
        return Outcome(False, str(exc))
    text = str(exc)
    return Outcome(False, f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


async def _call_async(function: CheckFunction, deliver: Callable[[Outcome], None]) -> None:
    outcome = Outcome(False, "the check ended abnormally")
    try:
        outcome = _judge(await function())
    except asyncio.CancelledError:
        outcome = _CANCELLED
        raise
    except Exception as exc:
        outcome = _failure(exc)
    finally:
        deliver(outcome)


def _call_sync(function: CheckFunction, deliver: Callable[[Outcome], None]) -> None:
    outcome = Outcome(False, "the check ended abnormally")
    try:
        result = function()
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited; closing it avoids a RuntimeWarning
            outcome = Outcome(
                False, "the check returned an awaitable; make it an `async def` function"
            )
        else:
            outcome = _judge(result)
    except Exception as exc:
        outcome = _failure(exc)
    finally:
        deliver(outcome)


_CANCELLED = Outcome(False, "cancelled")


class _AppLoopRun:
    """One run of an async check on the app's loop, cancellable from the admin thread.

    A task cancelled before its first step never enters the coroutine, so the check's
    own ``finally`` cannot report the end; the task's done callback does. That matters
    when the app loop was blocked past the timeout: without it the run would count as
    still running forever.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        function: CheckFunction,
        deliver: Callable[[Outcome], None],
    ) -> None:
        self._loop = loop
        self._function = function
        self._deliver = deliver
        self._task: asyncio.Task[None] | None = None
        self._cancelled = False

    def start(self) -> None:  # on the app loop
        if self._cancelled:
            self._deliver(Outcome(False, "cancelled before it started"))
            return
        self._task = self._loop.create_task(_call_async(self._function, self._deliver))
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self._deliver(_CANCELLED)

    def cancel(self) -> None:  # from the admin thread
        with contextlib.suppress(RuntimeError):  # the app loop closed: nothing to cancel
            self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:  # on the app loop, after start() if that was queued first
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()


def _settle(done: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not done.done():
        done.set_result(outcome)


def nothing() -> None:
    """What cancels a run that cannot be cancelled."""
    return


def launch(
    definition: CheckDefinition,
    done: asyncio.Future[Outcome],
    app_loop: asyncio.AbstractEventLoop | None,
) -> Callable[[], object]:
    """Start one run; return what cancels it (a thread cannot be cancelled)."""
    admin = asyncio.get_running_loop()

    def deliver(outcome: Outcome) -> None:  # from any thread
        with contextlib.suppress(RuntimeError):  # the admin loop closed: we stopped
            admin.call_soon_threadsafe(_settle, done, outcome)

    if definition.runs_on == "thread":
        threading.Thread(
            target=_call_sync,
            args=(definition.run, deliver),
            name=f"sidecar-check-{definition.name}",
            daemon=True,
        ).start()
        return nothing
    if definition.runs_on == "admin-loop":
        task = admin.create_task(_call_async(definition.run, lambda o: _settle(done, o)))
        task.add_done_callback(lambda t: _settle(done, _CANCELLED) if t.cancelled() else None)
        return task.cancel
    app = app_loop
    if app is None or app.is_closed():
        _settle(done, Outcome(False, "the app's event loop is not running"))
        return nothing
    run = _AppLoopRun(app, definition.run, deliver)
    try:
        app.call_soon_threadsafe(run.start)
    except RuntimeError:  # the app loop closed in between
        _settle(done, Outcome(False, "the app's event loop is not running"))
        return nothing
    return run.cancel
