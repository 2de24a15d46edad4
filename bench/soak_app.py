"""The app ``bench/soak.py`` serves: the benchmark's raw ASGI app plus what a soak needs.

``/plain``, ``/json`` and ``/echo`` (and the lifespan) are ``bench.apps:app`` itself, so
the soak runs the code the benchmark measures. Added here:

- ``/chunks``: a streamed response, ``CHUNKS`` chunks of ``CHUNK_SIZE`` bytes each, so
  every response goes through the chunked path and write flow control.
- ``/slow``: a streamed response that takes about a second (``SLOW_CHUNKS`` small chunks,
  ``SLOW_INTERVAL`` apart), for clients that leave while it is in progress. The app does
  not catch the ``OSError`` that ``send()`` raises once the client is gone, as most
  streaming apps do not.
- WebSocket, any path: every text or bytes message is sent back as it came.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import apps

CHUNK_SIZE = 4096
CHUNKS = 4
SLOW_CHUNKS = 100
SLOW_INTERVAL = 0.01
STREAM_TYPE = b"application/x-soak-stream"

_CHUNK = b"c" * CHUNK_SIZE
_STREAM_HEADERS = [(b"content-type", STREAM_TYPE)]
_SLOW_HEADERS = [(b"content-type", b"text/plain")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "websocket":
        await _echo(receive, send)
        return
    path = scope.get("path")
    if kind == "http" and path == "/chunks":
        await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        for _ in range(CHUNKS):
            await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if kind == "http" and path == "/slow":
        await send({"type": "http.response.start", "status": 200, "headers": _SLOW_HEADERS})
        for _ in range(SLOW_CHUNKS):
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(SLOW_INTERVAL)
        await send({"type": "http.response.body", "body": b""})
        return
    await apps.app(scope, receive, send)


async def _echo(receive: Any, send: Any) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
