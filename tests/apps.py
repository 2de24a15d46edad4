"""Small raw ASGI apps, one per behaviour under test.

Apps that tests need to observe record what happened in module-level objects that are
safe to read from the test thread (``threading.Event``, lists appended under the GIL).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

from sidecar import STATE_KEY, HealthChecks
from sidecar.types import ASGIApp, Message, Receive, Scope, Send


async def respond(send: Send, status: int = 200, body: bytes = b"ok", **extra: Any) -> None:
    headers = [(b"content-type", b"text/plain"), *extra.get("headers", [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def http_only(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every HTTP request with ``ok``; ignore lifespan by raising (like Django)."""
    if scope["type"] != "http":
        raise ValueError(f"unsupported scope type {scope['type']}")
    await respond(send)


def lifespan_app(
    *,
    on_startup: str = "complete",
    on_shutdown: str = "complete",
    state: dict[str, Any] | None = None,
    startup_message: str = "",
) -> Any:
    """Build an app whose lifespan does what the arguments say.

    ``on_startup``/``on_shutdown``: ``complete``, ``failed``, ``raise``, ``hang``,
    ``return`` (return without answering). Requests answer with the scope's state as JSON.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            if on_startup == "complete":
                scope["state"].update(state or {})
                await send({"type": "lifespan.startup.complete"})
            elif on_startup == "failed":
                await send({"type": "lifespan.startup.failed", "message": startup_message})
                return
            elif on_startup == "raise":
                raise RuntimeError("database is unreachable")
            elif on_startup == "hang":
                await asyncio.Event().wait()
            elif on_startup == "return":
                return
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            if on_shutdown == "complete":
                await send({"type": "lifespan.shutdown.complete"})
            elif on_shutdown == "failed":
                await send({"type": "lifespan.shutdown.failed", "message": "pool did not close"})
            elif on_shutdown == "raise":
                raise RuntimeError("shutdown blew up")
            elif on_shutdown == "hang":
                await asyncio.Event().wait()
            return
        body = json.dumps(sorted(scope.get("state", {}))).encode()
        await respond(send, body=body)

    return app


async def returns_after_startup(scope: Scope, receive: Receive, send: Send) -> None:
    """Complete startup and return at once (allowed by the spec)."""
    if scope["type"] == "lifespan":
        await receive()
        scope["state"]["answer"] = 42
        await send({"type": "lifespan.startup.complete"})
        return
    await respond(send, body=str(scope["state"]["answer"]).encode())


class CrashAfterStartup:
    """Complete startup; the lifespan task raises once ``trigger()`` is called."""

    def __init__(self) -> None:
        self.crashed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._go: asyncio.Event | None = None

    def trigger(self) -> None:
        assert self._loop is not None
        assert self._go is not None
        self._loop.call_soon_threadsafe(self._go.set)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            self._loop, self._go = asyncio.get_running_loop(), asyncio.Event()
            await send({"type": "lifespan.startup.complete"})
            await self._go.wait()
            self.crashed.set()
            raise RuntimeError("background refresher died")
        await respond(send)


class FlakyStartup:
    """Fail lifespan startup ``failures`` times, then succeed (or hang, if ``then_hang``)."""

    def __init__(self, failures: int, *, then_hang: bool = False) -> None:
        self.failures = failures
        self.then_hang = then_hang
        self.attempts = 0
        #: Set when the first attempt after the failures begins.
        self.recovering = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            self.attempts += 1
            if self.attempts <= self.failures:
                await send({"type": "lifespan.startup.failed", "message": f"try {self.attempts}"})
                return
            self.recovering.set()
            if self.then_hang:
                await asyncio.Event().wait()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await respond(send)


async def out_of_order(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer lifespan.startup with a shutdown message."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await respond(send)


class Recorder:
    """An app that records each HTTP scope and the messages it received."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.messages: list[list[Message]] = []
        self.disconnected = threading.Event()
        self.lifespan_calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.lifespan_calls += 1
            await receive()
            scope["state"]["shared"] = {"hits": 0}
            scope["state"]["name"] = "recorder"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.scopes.append(dict(scope))
        received: list[Message] = []
        self.messages.append(received)
        path = scope["path"]
        if path == "/mutate-state":
            scope["state"]["added_by_request"] = True
            scope["state"]["shared"]["hits"] += 1
        if path == "/wait-disconnect":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"streaming", "more_body": True})
            while True:
                message = await receive()
                received.append(message)
                if message["type"] == "http.disconnect":
                    self.disconnected.set()
                    return
        body = b""
        while True:
            message = await receive()
            received.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        document = {
            "path": scope["path"],
            "body_len": len(body),
            "chunks": len(received),
            "state_keys": sorted(scope["state"]),
            "hits": scope["state"]["shared"]["hits"],
        }
        await respond(send, body=json.dumps(document).encode())


async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
    """Stream five chunks without a Content-Length."""
    if scope["type"] != "http":
        raise ValueError("no lifespan here")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for index in range(5):
        await send({"type": "http.response.body", "body": b"part%d;" % index, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def faulty(scope: Scope, receive: Receive, send: Send) -> None:
    """Misbehave in the way the path says."""
    if scope["type"] != "http":
        raise ValueError("no lifespan here")
    path = scope["path"]
    if path == "/raise-before":
        raise RuntimeError("boom before the response")
    if path == "/raise-after":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
        )
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom in the middle of the response")
    if path == "/no-response":
        return
    if path == "/two-starts":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.start", "status": 201, "headers": []})
        return
    if path == "/bad-message":
        await send({"type": "http.response.body", "body": b"body before start"})
        return
    await respond(send)


class SlowRequests:
    """Answer ``/slow`` once ``release()`` is called; everything else at once."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.saw_disconnect = threading.Event()
        self.shutdown_ran = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None

    def release(self) -> None:
        assert self._loop is not None
        assert self._released is not None
        self._loop.call_soon_threadsafe(self._released.set)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            self._loop, self._released = asyncio.get_running_loop(), asyncio.Event()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            self.shutdown_ran.set()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/slow":
            assert self._released is not None
            self.entered.set()
            await self._released.wait()
        if scope["path"] == "/until-disconnect":
            self.entered.set()
            await receive()  # the (empty) body
            message = await receive()
            if message["type"] == "http.disconnect":
                self.saw_disconnect.set()
            return
        await respond(send)


async def framing(scope: Scope, receive: Receive, send: Send) -> None:
    """Responses whose framing the server must fix or refuse, chosen by path."""
    if scope["type"] != "http":
        raise ValueError("no lifespan here")
    path = scope["path"]
    if path == "/short":  # declares more than it sends
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"abc"})
    elif path == "/long":  # declares less than it sends
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"abcdef"})
    elif path == "/injection":
        headers = [(b"x-evil", b"a\r\nset-cookie: owned=1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"no"})
    elif path == "/no-content":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:
        await respond(send)


class IgnoresDisconnect:
    """Never answer and never look at ``receive()``: only cancellation ends it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.cancelled = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError("no lifespan here")
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class WebSocketApp:
    """A raw ASGI WebSocket app; the path picks the behaviour."""

    def __init__(self) -> None:
        self.disconnects: list[Message] = []
        self.disconnected = threading.Event()
        self.accepted = threading.Event()
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await respond(send)
            return
        if scope["type"] != "websocket":
            raise ValueError("no lifespan here")
        assert (await receive())["type"] == "websocket.connect"
        path = scope["path"].removeprefix(scope["root_path"])
        if path == "/deny":
            await send({"type": "websocket.close", "code": 1000})
            return
        if path == "/deny-custom":
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-reason", b"token")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b"no entry"})
            return
        if path == "/return-before-accept":
            return
        if path == "/raise-before":
            raise RuntimeError("refused to accept")
        offered = scope["subprotocols"]
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": offered[0] if offered else None,
                "headers": [(b"x-ws", b"yes")],
            }
        )
        self.accepted.set()
        if path == "/scope":
            document = {
                key: scope[key] if not isinstance(scope[key], bytes) else scope[key].decode()
                for key in ("type", "scheme", "path", "raw_path", "query_string", "root_path",
                            "http_version", "subprotocols", "extensions", "asgi")
            }  # fmt: skip
            document["has_method"] = "method" in scope
            document["state_keys"] = sorted(scope["state"])
            document["client_is_tuple"] = isinstance(scope["client"], tuple)
            await send({"type": "websocket.send", "text": json.dumps(document)})
        if path == "/raise-after":
            raise RuntimeError("handler crashed")
        if path == "/bad-message":
            try:
                await send({"type": "websocket.send", "bytes": b"x", "text": "x"})
            except Exception as exc:
                self.errors.append(exc)
                raise
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append(message)
                self.disconnected.set()
                return
            if message.get("text") == "close-me":
                await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": "echo:" + message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": b"echo:" + message["bytes"]})


class BodyReader:
    """Read the body only when asked to (``/read``); ``/reject`` answers from the headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError("no lifespan here")
        if scope["path"] == "/reject":
            await respond(send, 413, b"too big")
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await respond(send, body=b"read %d" % len(body))


def pathsend_app(path: str) -> Any:
    """Serve the file at ``path`` with http.response.pathsend when the server offers it."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError("no lifespan here")
        assert "http.response.pathsend" in scope["extensions"]
        headers = [(b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        target = path if scope["path"] != "/missing" else path + ".absent"
        await send({"type": "http.response.pathsend", "path": target})

    return app


async def whoami(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with the client, scheme and host the server put in the scope."""
    if scope["type"] != "http":
        raise ValueError("no lifespan here")
    host = dict(scope["headers"]).get(b"host", b"").decode()
    document = {"client": scope["client"], "scheme": scope["scheme"], "host": host}
    await respond(send, body=json.dumps(document).encode())


class ScopeChecker:
    """Check every HTTP scope against the ASGI spec; record violations instead of raising."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.calls = 0

    def _check(self, scope: Scope) -> None:
        problems = []
        if scope.get("type") != "http":
            problems.append(f"type {scope.get('type')!r}")
        if not isinstance(scope.get("method"), str) or not scope["method"].isupper():
            problems.append(f"method {scope.get('method')!r}")
        if scope.get("http_version") not in ("1.0", "1.1"):
            problems.append(f"http_version {scope.get('http_version')!r}")
        if not isinstance(scope.get("path"), str) or not scope["path"].startswith("/"):
            problems.append(f"path {scope.get('path')!r}")
        for key in ("raw_path", "query_string"):
            if not isinstance(scope.get(key), bytes):
                problems.append(f"{key} {scope.get(key)!r}")
        for name, value in scope.get("headers", []):
            if not isinstance(name, bytes) or not isinstance(value, bytes) or name != name.lower():
                problems.append(f"header {name!r}: {value!r}")
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
                problems.append(f"line break in header {name!r}")
        if problems:
            self.violations.append("; ".join(problems))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError("no lifespan here")
        self.calls += 1
        self._check(scope)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await respond(send)


class BlocksLoop:
    """``/block`` makes a blocking call in an async handler: the whole event loop stops
    until ``release()``. Every other path answers ``ok``. Lifespan is optional.

    ``during_startup``: the lifespan startup blocks the loop the same way instead.
    """

    def __init__(self, *, during_startup: bool = False) -> None:
        self.entered = threading.Event()
        self._released = threading.Event()
        self._during_startup = during_startup

    def release(self) -> None:
        self._released.set()

    def _block(self) -> None:
        self.entered.set()
        self._released.wait(30)  # blocking on purpose: no other task runs meanwhile

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            if self._during_startup:
                self._block()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/block":
            self._block()
        await respond(send)


class ScriptedCheck:
    """A health check whose outcome the test sets; each call is counted and announced.

    ``sync`` and ``run`` (async) fail with ``error`` when it is set. ``hang`` makes
    ``sync`` block until ``release()`` and ``run`` wait until cancelled.
    """

    def __init__(self) -> None:
        self.error: str | None = None
        self.hang = False
        self.calls = 0
        self.cancelled = threading.Event()
        self._released = threading.Event()
        self._cond = threading.Condition()

    def _begin(self) -> str | None:
        with self._cond:
            self.calls += 1
            self._cond.notify_all()
            return self.error

    def wait_for_call(self, number: int, timeout: float = 30) -> None:
        """Wait until call ``number`` has begun (so every earlier one has been recorded)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.calls >= number, timeout):
                raise AssertionError(f"call {number} never came; {self.calls} so far")

    def release(self) -> None:
        self._released.set()

    def sync(self) -> None:
        error = self._begin()
        if self.hang:
            self._released.wait(30)
        if error:
            raise RuntimeError(error)

    async def run(self) -> None:
        error = self._begin()
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if error:
            raise RuntimeError(error)


def registers(
    register: Callable[[HealthChecks], None], record: dict[str, Any] | None = None
) -> ASGIApp:
    """A lifespan app that registers health checks during startup.

    ``register`` receives ``scope["state"]["sidecar.health"]``. Requests answer with the
    request's state keys as JSON; ``record`` (if given) gets ``"shutdown_began"`` when
    lifespan shutdown starts.
    """
    seen = record if record is not None else {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            register(scope["state"][STATE_KEY])
            await send({"type": "lifespan.startup.complete"})
            await receive()
            seen["shutdown_began"] = True
            await send({"type": "lifespan.shutdown.complete"})
            return
        await respond(send, body=json.dumps(sorted(scope["state"])).encode())

    return app


def check_passes() -> bool:
    """A configured ``callable`` check (sync) that passes."""
    return True


async def check_fails() -> None:
    """A configured ``callable`` check (async) that fails."""
    raise ConnectionError("replica is 30s behind")


async def routed(scope: Scope, receive: Receive, send: Send) -> None:
    """Route like a router would (``scope["route"]``); echo the request id it was given.

    ``/items/<n>`` is the route ``/items/{id}``; ``/fail`` answers 503; ``/own-id`` an
    ``x-request-id`` of its own; anything else matches no route (404).
    """
    if scope["type"] != "http":
        raise ValueError("no lifespan here")
    path = scope["path"]
    seen = dict(scope["headers"]).get(b"x-request-id", b"-")
    if path.startswith("/items/"):
        scope["route"] = "/items/{id}"
        await respond(send, body=b"id " + seen)
    elif path == "/fail":
        scope["route"] = "/fail"
        await respond(send, status=503, body=b"down")
    elif path == "/own-id":
        scope["route"] = "/own-id"
        await respond(send, headers=[(b"X-Request-ID", b"from-the-app")])
    else:
        await respond(send, status=404, body=b"no route")
