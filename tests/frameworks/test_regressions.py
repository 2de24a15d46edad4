"""Bridge bugs the framework matrix found, each pinned down with a small raw ASGI app.

Every app here does what a real framework does (named in its docstring); the framework
tests exercise the same paths end to end, these keep them visible without a framework.
"""

from __future__ import annotations

import asyncio
import http.client
import queue
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from sidecar.types import Message, Receive, Scope, Send

from ..conftest import WAIT, fetch

BIG = 32 * 1024 * 1024  # far more than loopback socket buffers take at once


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT)


async def raises_after_a_complete_response(scope: Scope, receive: Receive, send: Send) -> None:
    """A large response sent whole, then an exception: a FastAPI background task failing."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"x" * BIG})
    raise RuntimeError("the background task failed")


def test_exception_after_a_complete_response_does_not_truncate_it(
    run_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    running = run_sidecar(raises_after_a_complete_response)
    conn = connect(running.app("/"))
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.getheader("content-length") == str(BIG)
        body = response.read()  # IncompleteRead when the connection is aborted
    finally:
        conn.close()
    assert len(body) == BIG
    running.sync()
    assert "the background task failed" in caplog.text


class ListensForDisconnect:
    """Starts waiting for ``http.disconnect`` before it responds, then waits for that wait.

    Litestar's ``Stream`` response does this; so do apps that cancel work when the client
    leaves. Once the response is complete, ``receive()`` must return ``http.disconnect``.
    """

    def __init__(self) -> None:
        self.events: queue.Queue[Message] = queue.Queue()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()  # the (empty) request body
        listener = asyncio.ensure_future(receive())
        await asyncio.sleep(0)  # one loop turn: the listener is now waiting in receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"streamed", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self.events.put(await listener)


def test_receive_waiting_when_the_response_completes_gets_disconnect(run_sidecar: Any) -> None:
    app = ListensForDisconnect()
    running = run_sidecar(app)
    conn = connect(running.app("/"))
    try:
        for _ in range(2):  # the second request needs the first app call to have ended
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"streamed"
    finally:
        conn.close()
    for _ in range(2):
        assert app.events.get(timeout=WAIT) == {"type": "http.disconnect"}


async def receives_before_accepting(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads messages from a task started before ``websocket.accept``, as Quart does."""
    if scope["type"] != "websocket":
        return
    assert (await receive())["type"] == "websocket.connect"
    first = asyncio.ensure_future(receive())
    await asyncio.sleep(0)  # one loop turn: the reader is now waiting in receive()
    await send({"type": "websocket.accept"})
    message = await first
    await send({"type": "websocket.send", "text": f"got {message.get('text')}"})
    await send({"type": "websocket.close", "code": 1000})


def test_receive_waiting_before_accept_gets_the_first_message(run_sidecar: Any) -> None:
    running = run_sidecar(receives_before_accepting)
    url = running.app("/").replace("http://", "ws://")

    async def talk() -> str:
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str("hello")
            return await ws.receive_str(timeout=WAIT)

    assert asyncio.run(talk()) == "got hello"


class WorksAfterResponding:
    """Answers, then keeps working until released: a Starlette/FastAPI background task."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self._gate: asyncio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self._gate is None:
            self._gate = asyncio.Event()
        body = b"released" if scope["path"] == "/release" else b"queued"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        if scope["path"] == "/release":
            self._gate.set()
        else:
            await self._gate.wait()  # the work after the response
            self.released.set()


def test_work_after_the_response_does_not_hold_the_connection(run_sidecar: Any) -> None:
    app = WorksAfterResponding()
    running = run_sidecar(app)
    conn = connect(running.app("/"))
    try:
        conn.request("GET", "/job")
        assert conn.getresponse().read() == b"queued"
        # The same connection serves the next request while the job still runs.
        conn.request("GET", "/release")
        assert conn.getresponse().read() == b"released"
    finally:
        conn.close()
    assert app.released.wait(WAIT)


class KeepsWorking:
    """Answers, then works until cancelled: a background task that never ends."""

    def __init__(self) -> None:
        self.working = threading.Event()
        self.cancelled = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        self.working.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def test_work_after_the_response_is_cancelled_at_the_graceful_deadline(run_sidecar: Any) -> None:
    app = KeepsWorking()
    running = run_sidecar(app, shutdown__graceful_timeout=0.1)
    assert fetch(running.app("/")).body == b"done"
    assert app.working.wait(WAIT)
    assert running.stop() is None
    assert app.cancelled.is_set()
    assert running.sidecar.app_server.aborted == 1


class ReadsBodyAfterResponding:
    """Answers before reading the request body, then reads it."""

    def __init__(self) -> None:
        self.events: queue.Queue[str] = queue.Queue()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"early"})
        while True:
            message = await receive()
            self.events.put(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return


def test_receive_after_the_response_is_disconnect(run_sidecar: Any) -> None:
    app = ReadsBodyAfterResponding()
    running = run_sidecar(app)
    conn = connect(running.app("/"))
    try:
        for _ in range(3):
            conn.request("POST", "/", body=b"x" * 1_000_000)
            assert conn.getresponse().read() == b"early"
            assert app.events.get(timeout=WAIT) == "http.disconnect"
    finally:
        conn.close()


async def waits_for_the_client_to_close(scope: Scope, receive: Receive, send: Send) -> None:
    """Accepts, then reads until the client closes (what every framework's loop does)."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


@pytest.mark.parametrize("code", [1000, 1001, 4100])
def test_the_clients_close_code_is_echoed(run_sidecar: Any, code: int) -> None:
    # RFC 6455 5.5.1: the answering close frame typically echoes the code; uvicorn does,
    # aiohttp's automatic answer sends 1000 whatever the client said.
    running = run_sidecar(waits_for_the_client_to_close)
    url = running.app("/").replace("http://", "ws://")

    async def talk() -> int | None:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url)
            await ws.close(code=code, message=b"bye")
            return ws.close_code

    assert asyncio.run(talk()) == code


class RecordsDisconnect:
    """Accepts, then records the ``websocket.disconnect`` it receives."""

    def __init__(self) -> None:
        self.disconnects: queue.Queue[Message] = queue.Queue()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] != "websocket.disconnect":
            pass
        self.disconnects.put(message)


def test_a_close_frame_without_a_code_is_1005_for_the_app(run_sidecar: Any) -> None:
    # ASGI: "If no code was received in the frame from the client, the server should set
    # this to 1005". aiohttp reports such a frame with code 0.
    app = RecordsDisconnect()
    running = run_sidecar(app)
    parts = urlsplit(running.app("/"))
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=WAIT) as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        handshake = b""
        while b"\r\n\r\n" not in handshake and (chunk := sock.recv(4096)):
            handshake += chunk
        assert handshake.startswith(b"HTTP/1.1 101")
        sock.sendall(b"\x88\x80\x00\x00\x00\x00")  # FIN + close, masked, empty payload
        answer = handshake.split(b"\r\n\r\n", 1)[1]
        while len(answer) < 4 and (chunk := sock.recv(4096)):
            answer += chunk
    assert answer[:4] == b"\x88\x02\x03\xe8"  # the server's close frame says 1000
    assert app.disconnects.get(timeout=WAIT) == {
        "type": "websocket.disconnect",
        "code": 1005,
        "reason": "",
    }
