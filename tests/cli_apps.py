"""Apps for the CLI subprocess tests (imported by ``python -m sidecar`` as ``cli_apps``)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from tests.apps import respond

logger = logging.getLogger("cli_apps")


async def slow_startup(scope: Any, receive: Any, send: Any) -> None:
    """A lifespan that takes a moment; answers ``ok``."""
    if scope["type"] == "lifespan":
        await receive()
        await asyncio.sleep(0.05)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await respond(send)


async def hangs_in_startup(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        logger.warning("startup began")
        await asyncio.Event().wait()


async def fails_startup(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "cache warmup failed"})


def make_app() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await respond(send, body=b"made by factory")

    return app


class _Container:
    @staticmethod
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await respond(send, body=b"from container")


container = _Container()


_attempts = {"count": 0}


async def fails_twice(scope: Any, receive: Any, send: Any) -> None:
    """Fail lifespan startup twice, then succeed (for the startup_attempts scrape test)."""
    if scope["type"] == "lifespan":
        await receive()
        _attempts["count"] += 1
        if _attempts["count"] <= 2:
            await send({"type": "lifespan.startup.failed", "message": "not yet"})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await respond(send)


async def blocks_loop(scope: Any, receive: Any, send: Any) -> None:
    """``/block`` blocks the event loop for 1.5 s (a blocking call in an async handler)."""
    if scope["type"] != "http":
        raise ValueError("no lifespan here")
    if scope["path"] == "/block":
        # Deliberately blocking: the loop stalls and the sidecar must notice.
        time.sleep(1.5)  # noqa: ASYNC251
    await respond(send)


async def never_lets_go(scope: Any, receive: Any, send: Any) -> None:
    """The worst case for a stop: nothing ends unless it is cut.

    Lifespan shutdown never completes; ``/hang`` never answers; ``/stream`` streams
    forever without listening for the end; a WebSocket is accepted and then ignored.
    """
    kind = scope["type"]
    if kind == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        logger.warning("lifespan shutdown began")
        await asyncio.Event().wait()
    elif kind == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        logger.warning("websocket accepted")
        await asyncio.Event().wait()  # not even listening for the close
    elif scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        logger.warning("stream began")
        while True:
            await send({"type": "http.response.body", "body": b"data: tick\n\n", "more_body": True})
            await asyncio.sleep(0.05)
    else:
        logger.warning("hang began")
        await asyncio.Event().wait()


async def environ(scope: Any, receive: Any, send: Any) -> None:
    """``/NAME`` answers the value of the environment variable NAME (``-`` when unset)."""
    if scope["type"] != "http":
        raise ValueError("no lifespan here")
    value = os.environ.get(scope["path"].lstrip("/"), "-")
    await respond(send, body=value.encode())


async def workers_app(scope: Any, receive: Any, send: Any) -> None:
    """For the worker tests: which process answers, and ways to misbehave.

    ``/pid`` answers the worker's pid; ``/slow?ms=N`` takes N ms; ``/spin?s=N`` blocks
    the event loop with CPU work for N seconds; ``/cpu`` spends half a millisecond of CPU.
    """
    kind = scope["type"]
    if kind == "lifespan":
        await receive()
        logger.warning("lifespan startup in pid %d", os.getpid())
        await send({"type": "lifespan.startup.complete"})
        await receive()
        logger.warning("lifespan shutdown in pid %d", os.getpid())
        await send({"type": "lifespan.shutdown.complete"})
        return
    path, query = scope["path"], scope["query_string"].decode()
    value = float(query.partition("=")[2] or 0)
    if path == "/slow":
        await asyncio.sleep(value / 1000)
    elif path == "/spin":
        logger.warning("spinning in pid %d", os.getpid())
        end = time.monotonic() + value
        while time.monotonic() < end:  # deliberately blocking: a stuck worker
            pass
    elif path == "/cpu":
        end = time.perf_counter() + 0.0005
        while time.perf_counter() < end:
            pass
    await respond(send, body=str(os.getpid()).encode())
