"""Apps served by both servers in the benchmark: the same callable, byte for byte."""

from __future__ import annotations

import json
from typing import Any

_PLAIN = b"Hello, world!"
_PLAIN_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"13")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Raw ASGI: ``/plain`` (13 bytes of text) and ``/json`` (a small JSON object)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/json":
        body = json.dumps({"message": "Hello, world!"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _PLAIN_HEADERS})
    await send({"type": "http.response.body", "body": _PLAIN})
