"""A small pure-ASGI app for trying the sidecar: ``sidecar run sidecar.examples.demo:app``.

Its lifespan takes a moment (like opening a connection pool), fills ``state`` and
registers a readiness check with the sidecar; the routes show that state, echo a body,
answer slowly, stream, and block the event loop the way a blocking call in an
``async def`` handler does.

Routes: ``GET /`` (JSON with the lifespan state), ``GET /slow?seconds=N`` (waits, then
answers; at most 60 s), ``POST /echo`` (returns the body), ``GET /stream`` (ten chunks,
0.1 s apart), ``GET /block?seconds=N`` (blocks the whole event loop; at most 60 s: watch
``/readyz?verbose`` on the admin port meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any
from urllib.parse import parse_qs

from sidecar.types import Receive, Scope, Send

# Seconds the lifespan startup takes; an environment variable so demos can show a slow start.
STARTUP_SECONDS = float(os.environ.get("DEMO_STARTUP_SECONDS", "0.5"))


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, document: Any) -> None:
    await _respond(send, status, json.dumps(document).encode(), b"application/json")


async def _lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await asyncio.sleep(STARTUP_SECONDS)
            state = scope["state"]
            state["started_at"] = time.time()
            state["greeting"] = "hello from the demo app"

            async def pool_ping() -> None:  # what a real app does with its pool
                await asyncio.sleep(0.001)

            health = state.get("sidecar.health")  # absent under other servers
            if health is not None:
                health.add_readiness_check("demo-pool", pool_ping)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The demo ASGI application."""
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    state = scope.get("state", {})
    if path == "/" and method in ("GET", "HEAD"):
        await _json(
            send,
            200,
            {
                "greeting": state.get("greeting"),
                "uptime_s": round(time.time() - state.get("started_at", time.time()), 3),
            },
        )
    elif path in ("/slow", "/block") and method == "GET":
        query = parse_qs(scope["query_string"].decode("latin-1"))
        try:
            seconds = max(min(float(query.get("seconds", ["2"])[0]), 60.0), 0.0)
        except ValueError:
            await _respond(send, 400, b"seconds must be a number\n", b"text/plain")
            return
        if path == "/slow":
            await asyncio.sleep(seconds)
        else:
            # The mistake the sidecar detects: a blocking call stalls every request.
            time.sleep(seconds)  # noqa: ASYNC251
        await _json(send, 200, {"slept_s": seconds})
    elif path == "/echo" and method == "POST":
        body = await _read_body(receive)
        if body is not None:
            await _respond(send, 200, body, b"application/octet-stream")
    elif path == "/stream" and method == "GET":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for index in range(10):
            await send(
                {
                    "type": "http.response.body",
                    "body": f"chunk {index}\n".encode(),
                    "more_body": True,
                }
            )
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})
    else:
        await _respond(send, 404, b"not found\n", b"text/plain")
