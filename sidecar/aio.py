"""Small asyncio helpers shared by the runner and the servers (a leaf module)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import ConfigError


async def first_of(
    *awaitables: Awaitable[Any], deadline: float | None = None
) -> asyncio.Future[Any] | None:
    """Wait until one of ``awaitables`` is done or the loop's clock reaches ``deadline``.

    The others are cancelled (not awaited: a caller that cancels real work awaits it
    itself). Returns the first of ``awaitables``, in argument order, that is done, or
    ``None`` when the deadline came first.
    """
    futures = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    timeout = None
    if deadline is not None:
        timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
    try:
        await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
    return next((future for future in futures if future.done() and not future.cancelled()), None)


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``server.loop`` asks for: uvloop when installed (``auto``), or
    asyncio's (``None``); ``uvloop`` without uvloop installed is a ``ConfigError``."""
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise ConfigError(
                [
                    "server.loop is 'uvloop' but uvloop is not installed "
                    "(pip install uvloop), or set server.loop to 'auto'"
                ]
            ) from None
        return None
    return uvloop.new_event_loop
