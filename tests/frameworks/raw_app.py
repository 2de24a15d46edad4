"""A raw ASGI app (no framework) for what servers do on their own: errors, framing, denial."""

from __future__ import annotations

from typing import Any

Scope = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if scope["type"] == "websocket":
        await receive()
        if path == "/ws/deny":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        return
    if path == "/raise":
        raise RuntimeError("boom before the response")
    if path == "/nothing":
        return
    if path == "/one-message":  # a whole body in one message, no content-length
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"whole"})
        return
    if path == "/parts":  # no content-length, several messages
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})
        return
    if path == "/Mixed-Case":
        headers = [(b"X-Mixed-Case", b"Value"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if path == "/echo":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"no such path"})


async def startup_raises(scope: Scope, receive: Any, send: Any) -> None:
    """Speaks lifespan, and its startup crashes (after receiving ``lifespan.startup``)."""
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("the cache is unreachable")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served without startup"})
