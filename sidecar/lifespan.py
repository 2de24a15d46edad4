"""Drive an app through the ASGI lifespan protocol (spec 2.0, with ``scope["state"]``).

Support detection in ``auto`` mode follows one rule: an app that raises or returns
*before* it has received ``lifespan.startup`` does not speak lifespan (Django's
handler raises on the unknown scope type), so it is served without one. An app that
raises *after* receiving ``lifespan.startup`` does speak lifespan and its startup
crashed: that is a failure, never "unsupported", because serving an app whose startup
code never finished would hand out requests to a half-initialised process.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from enum import Enum
from typing import Any

from .config import LifespanConfig
from .errors import LifespanError, UnexpectedMessageError
from .types import ASGIApp, Message

logger = logging.getLogger("sidecar.lifespan")

_SCOPE_ASGI = {"version": "3.0", "spec_version": "2.0"}
# Seconds a cancelled lifespan call gets to unwind (its finally blocks) before the
# sidecar goes on without it.
CANCEL_GRACE = 0.5


class _Stage(Enum):
    NEW = "new"
    STARTING = "starting"  # lifespan.startup delivered or queued, no answer yet
    STARTED = "started"
    STOPPING = "stopping"  # lifespan.shutdown queued, no answer yet
    STOPPED = "stopped"


class LifespanDriver:
    """Run one lifespan session of ``app``: ``startup()``, later ``shutdown()``.

    A driver is single-use; a retried startup gets a fresh driver, so the app sees a
    fresh ``state`` dict and a fresh lifespan call each attempt.
    """

    def __init__(
        self,
        config: LifespanConfig,
        app: ASGIApp,
        *,
        on_crash: Callable[[str], None] | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        self._config = config
        self._app = app
        self._on_crash = on_crash
        #: The lifespan scope's ``state``; the runner seeds it with the sidecar's handles.
        self.state: dict[str, Any] = state if state is not None else {}
        #: ``None`` until known; ``False`` when the app does not speak lifespan.
        self.supported: bool | None = None
        self._stage = _Stage.NEW
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._startup_received = False
        self._answer: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        """Tell whether startup completed (with lifespan, or without when unsupported)."""
        return self._stage in (_Stage.STARTED, _Stage.STOPPING, _Stage.STOPPED)

    # -- the two callables handed to the app ------------------------------------------

    async def _receive(self) -> Message:
        message = await self._inbox.get()
        if message["type"] == "lifespan.startup":
            self._startup_received = True
        return message

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        expected: tuple[str, ...] = ()
        if self._stage is _Stage.STARTING:
            expected = ("lifespan.startup.complete", "lifespan.startup.failed")
        elif self._stage is _Stage.STOPPING:
            expected = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")
        if kind not in expected or self._answer is None or self._answer.done():
            raise UnexpectedMessageError(message, expected or ("no message at this point",))
        self._answer.set_result(message)

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": dict(_SCOPE_ASGI), "state": self.state}
        try:
            await self._app(scope, self._receive, self._send)
        except Exception as exc:
            self._error = exc
            self._app_ended(exc)
        else:
            self._app_ended(None)

    def _app_ended(self, exc: BaseException | None) -> None:
        """Resolve whoever is waiting when the app's lifespan call returns or raises."""
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_result({"type": "sidecar.ended"})
            return
        if exc is not None and self._stage is _Stage.STARTED:
            text = "".join(traceback.format_exception(exc)).rstrip()
            logger.error("lifespan task crashed after startup completed:\n%s", text)
            if self._on_crash is not None:
                self._on_crash(f"{type(exc).__name__}: {exc}")

    # -- startup ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait for the answer; raise ``LifespanError``."""
        if self._stage is not _Stage.NEW:
            raise RuntimeError("a LifespanDriver runs startup once")
        if self._config.mode == "off":
            self.supported = False
            self._stage = _Stage.STARTED
            return
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self._stage = _Stage.STARTING
        self._inbox.put_nowait({"type": "lifespan.startup"})
        self._task = asyncio.create_task(self._main(), name="sidecar-lifespan")
        try:
            async with asyncio.timeout(self._config.startup_timeout):
                answer = await asyncio.shield(self._answer)
        except TimeoutError:
            await self._cancel_task()
            raise LifespanError(
                "startup",
                "timeout",
                f"lifespan startup did not complete within {self._config.startup_timeout:g}s "
                "(lifespan.startup_timeout)",
            ) from None
        except asyncio.CancelledError:
            await self._cancel_task()
            raise
        self._on_startup_answer(answer)

    def _on_startup_answer(self, answer: Message) -> None:
        kind = answer["type"]
        if kind == "lifespan.startup.complete":
            self.supported = True
            self._stage = _Stage.STARTED
            return
        if kind == "lifespan.startup.failed":
            self._stage = _Stage.STOPPED
            reason = answer.get("message") or "no message given"
            raise LifespanError(
                "startup", "failed", f"the app reported lifespan.startup.failed: {reason}"
            )
        # The app's lifespan call ended (returned or raised) without answering.
        error = self._error
        if not self._startup_received and self._config.mode == "auto":
            self.supported = False
            self._stage = _Stage.STARTED
            detail = f" ({type(error).__name__}: {error})" if error is not None else ""
            logger.info(
                "the app does not support the ASGI lifespan protocol%s; serving without it",
                detail,
            )
            return
        self._stage = _Stage.STOPPED
        if error is None:
            raise LifespanError(
                "startup",
                "failed",
                "the app's lifespan returned without sending lifespan.startup.complete"
                + ("" if self._startup_received else " (lifespan.mode is 'on')"),
            )
        where = (
            "while handling lifespan.startup"
            if self._startup_received
            else "before receiving lifespan.startup (lifespan.mode is 'on')"
        )
        raise _raised("startup", where, error)

    # -- shutdown -----------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the answer; raise ``LifespanError``.

        Does nothing when the app has no lifespan running: unsupported, ``mode: off``,
        or a lifespan coroutine that returned right after startup (allowed by the spec).
        """
        if self._stage is not _Stage.STARTED or not self.supported:
            return
        task = self._task
        if task is None or task.done():
            self._stage = _Stage.STOPPED
            logger.debug("lifespan task already ended; skipping lifespan.shutdown")
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.shutdown_timeout
        self._answer = loop.create_future()
        self._stage = _Stage.STOPPING
        self._inbox.put_nowait({"type": "lifespan.shutdown"})
        try:
            async with asyncio.timeout_at(deadline):
                answer = await asyncio.shield(self._answer)
        except TimeoutError:
            await self._cancel_task()
            self._stage = _Stage.STOPPED
            raise LifespanError(
                "shutdown",
                "timeout",
                f"lifespan shutdown did not complete within {self._config.shutdown_timeout:g}s "
                "(lifespan.shutdown_timeout)",
            ) from None
        except asyncio.CancelledError:
            await self._cancel_task()
            raise
        self._stage = _Stage.STOPPED
        kind = answer["type"]
        if kind == "lifespan.shutdown.complete":
            await self._finish_task(deadline)
            return
        if kind == "lifespan.shutdown.failed":
            await self._finish_task(deadline)
            reason = answer.get("message") or "no message given"
            raise LifespanError(
                "shutdown", "failed", f"the app reported lifespan.shutdown.failed: {reason}"
            )
        error = self._error
        if error is None:
            raise LifespanError(
                "shutdown",
                "failed",
                "the app's lifespan returned without sending lifespan.shutdown.complete",
            )
        raise _raised("shutdown", "while handling lifespan.shutdown", error)

    async def _finish_task(self, deadline: float) -> None:
        """Let the app's lifespan call return after it answered, within the same budget."""
        task = self._task
        if task is None or task.done():
            return
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(task)
        except TimeoutError:
            await self._cancel_task()
        except Exception:
            pass  # already recorded by _main

    async def _cancel_task(self) -> None:
        """Cancel the app's lifespan call and give it ``CANCEL_GRACE`` to unwind."""
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        # Bounded: an app that swallows the cancellation must not hold up the exit.
        await asyncio.wait((task,), timeout=CANCEL_GRACE)
        if not task.done():
            logger.warning(
                "the app's lifespan task is still running %gs after it was cancelled; "
                "leaving it behind",
                CANCEL_GRACE,
            )


def _raised(stage: str, where: str, error: BaseException) -> LifespanError:
    """The error for an app whose lifespan call raised ``error`` at ``stage``."""
    trace = "".join(traceback.format_exception(error)).rstrip()
    return LifespanError(
        stage, "exception", f"the app raised {where}: {type(error).__name__}: {error}\n{trace}"
    )
