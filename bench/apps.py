"""Apps served by every server in the benchmark: the same callable, byte for byte.

``app`` is raw ASGI; ``bench.fastapi_app:app`` (a module of its own, so that importing
this one stays cheap for the startup measurement) is the FastAPI scenario.
"""

from __future__ import annotations

import json
import time
from typing import Any

_PLAIN = b"Hello, world!"
_PLAIN_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
STREAM_CHUNK = b"x" * (64 * 1024)
STREAM_CHUNKS = 16  # 1 MiB


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Raw ASGI.

    ``/plain``: 13 bytes of text. ``/json``: a small JSON object. ``/echo``: the request
    body back. ``/stream``: 1 MiB in 64 KiB chunks, chunked encoding. ``/block``: keeps
    the event loop busy with CPU work for ``?ms=`` milliseconds (default 200).
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/plain":
        await send({"type": "http.response.start", "status": 200, "headers": _PLAIN_HEADERS})
        await send({"type": "http.response.body", "body": _PLAIN})
        return
    if path == "/json":
        body = json.dumps({"message": "Hello, world!"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/echo":
        parts = []
        more = True
        while more:
            message = await receive()
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(parts)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", b"%d" % len(body)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/stream":
        headers = [(b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(STREAM_CHUNKS):
            await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/block":
        query = scope["query_string"].decode()
        millis = float(query.removeprefix("ms=")) if query.startswith("ms=") else 200.0
        until = time.perf_counter() + millis / 1000
        while time.perf_counter() < until:  # CPU work that never yields to the loop
            pass
    await send({"type": "http.response.start", "status": 200, "headers": _PLAIN_HEADERS})
    await send({"type": "http.response.body", "body": _PLAIN})
