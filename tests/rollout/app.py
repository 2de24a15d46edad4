"""The app the simulator's pods host: ``sidecar run tests.rollout.app:app``.

Routes (all GET):

- ``/short``: answers at once;
- ``/slow?seconds=S``: answers after S seconds (a slow query, an upload being processed);
- ``/stream?chunks=N&interval=T``: a chunked response of N lines, one every T seconds,
  then ``end``; a client that misses the ``end`` line got a cut stream;
- ``/ws``: a WebSocket that echoes every message.

Every response carries ``x-pod`` (the pod's name) so the simulator sees where traffic went.

The lifespan takes ``ROLLOUT_STARTUP_SECONDS`` (default 0.2) to start and logs its
shutdown, so the simulator sees that it ran in every pod. With
``ROLLOUT_SHUTDOWN_GATE=stdin`` the app is tied to the simulator through its stdin:

- the shutdown waits (at most ``ROLLOUT_GATE_TIMEOUT`` seconds, default 10) for a line on
  stdin: the simulator reads the pod's final metrics from its admin port meanwhile, then
  releases it;
- stdin closing before the shutdown means the simulator is gone (killed, crashed): the
  app sends its own process SIGTERM, so no pod outlives the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any
from urllib.parse import parse_qs

logger = logging.getLogger("rollout_app")

POD = os.environ.get("ROLLOUT_POD", "pod")
STARTUP_SECONDS = float(os.environ.get("ROLLOUT_STARTUP_SECONDS", "0.2"))
SHUTDOWN_GATE = os.environ.get("ROLLOUT_SHUTDOWN_GATE", "")
GATE_TIMEOUT = float(os.environ.get("ROLLOUT_GATE_TIMEOUT", "10"))

# Log lines the simulator waits for (it matches them by these prefixes).
STARTED = "rollout-app: startup complete"
SHUTDOWN_STARTED = "rollout-app: lifespan shutdown started"
SHUTDOWN_COMPLETE = "rollout-app: lifespan shutdown complete"

_HEADERS = [(b"content-type", b"text/plain"), (b"x-pod", POD.encode())]


class _Counts:
    served = 0
    in_flight = 0


class _Gate:
    """The stdin link to the simulator (``ROLLOUT_SHUTDOWN_GATE=stdin``)."""

    released: asyncio.Event | None = None
    shutting_down = False
    watcher: asyncio.Task[None] | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
    elif kind == "websocket":
        await _echo(receive, send)
    else:
        _Counts.in_flight += 1
        try:
            await _http(scope, send)
            _Counts.served += 1
        finally:
            _Counts.in_flight -= 1


async def _lifespan(receive: Any, send: Any) -> None:
    message = await receive()
    assert message["type"] == "lifespan.startup", message
    if SHUTDOWN_GATE == "stdin":
        _Gate.released = asyncio.Event()
        _Gate.watcher = asyncio.create_task(_watch_stdin(_Gate.released))
    await asyncio.sleep(STARTUP_SECONDS)  # stands for opening pools, warming caches
    await send({"type": "lifespan.startup.complete"})
    logger.info("%s (pod %s)", STARTED, POD)
    message = await receive()
    assert message["type"] == "lifespan.shutdown", message
    _Gate.shutting_down = True
    logger.info(
        "%s (pod %s, served %d, in flight %d)",
        SHUTDOWN_STARTED,
        POD,
        _Counts.served,
        _Counts.in_flight,
    )
    if _Gate.released is not None:
        try:
            async with asyncio.timeout(GATE_TIMEOUT):
                await _Gate.released.wait()
        except TimeoutError:
            logger.warning("rollout-app: shutdown gate not released within %gs", GATE_TIMEOUT)
    await send({"type": "lifespan.shutdown.complete"})
    logger.info("%s (pod %s)", SHUTDOWN_COMPLETE, POD)


async def _watch_stdin(released: asyncio.Event) -> None:
    """Release the gate on a line from the simulator; stop the pod if it goes away."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while await reader.readline():
            released.set()
    finally:
        transport.close()
    released.set()
    if not _Gate.shutting_down:
        logger.warning("rollout-app: stdin closed, the simulator is gone; stopping this pod")
        os.kill(os.getpid(), signal.SIGTERM)


def _query(scope: dict[str, Any], name: str, default: float) -> float:
    values = parse_qs(scope["query_string"].decode()).get(name)
    return float(values[0]) if values else default


async def _http(scope: dict[str, Any], send: Any) -> None:
    path = scope["path"]
    if path == "/short":
        await _respond(send, 200, b"short ok")
    elif path == "/slow":
        await asyncio.sleep(_query(scope, "seconds", 2.0))
        await _respond(send, 200, b"slow ok")
    elif path == "/stream":
        chunks = int(_query(scope, "chunks", 10))
        interval = _query(scope, "interval", 0.1)
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        for number in range(chunks):
            body = b"chunk %d\n" % number
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await asyncio.sleep(interval)
        await send({"type": "http.response.body", "body": b"end\n"})
    else:
        await _respond(send, 404, b"not found")


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": body})


async def _echo(receive: Any, send: Any) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect", message
    await send({"type": "websocket.accept", "headers": [(b"x-pod", POD.encode())]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        reply: dict[str, Any] = {"type": "websocket.send"}
        if message.get("text") is not None:
            reply["text"] = message["text"]
        else:
            reply["bytes"] = message.get("bytes") or b""
        # A close from the server side (the drain) may cross an echo; nothing to do then.
        with contextlib.suppress(OSError):
            await send(reply)
