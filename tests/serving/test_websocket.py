"""WebSocket hosting over real connections on loopback, with aiohttp's client."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest

from sidecar.errors import UnexpectedMessageError

from .. import apps

T = TypeVar("T")


def run_client(action: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    """Run one client coroutine in a fresh event loop on the test thread."""

    async def main() -> T:
        async with aiohttp.ClientSession() as session:
            return await action(session)

    return asyncio.run(main())


def ws_url(running: Any, path: str) -> str:
    return running.app(path).replace("http://", "ws://")


def test_echo_text_and_bytes_with_subprotocol_and_headers(run_sidecar: Any) -> None:
    app = apps.WebSocketApp()
    running = run_sidecar(app)

    async def talk(session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.ws_connect(ws_url(running, "/echo"), protocols=("chat", "v2")) as ws:
            await ws.send_str("hello")
            text = await ws.receive_str()
            await ws.send_bytes(b"\x00\x01")
            data = await ws.receive_bytes()
            return {
                "text": text,
                "bytes": data,
                "protocol": ws.protocol,
                "header": ws._response.headers.get("x-ws"),
                "server": ws._response.headers.get("server"),
            }

    result = run_client(talk)
    # The handshake names no server software (aiohttp would name itself and Python).
    assert result == {"text": "echo:hello", "bytes": b"echo:\x00\x01", "protocol": "chat",
                      "header": "yes", "server": None}  # fmt: skip
    assert app.disconnected.wait(30)
    assert app.disconnects[-1]["code"] == 1000


def test_websocket_scope(run_sidecar: Any) -> None:
    running = run_sidecar(apps.WebSocketApp(), server__root_path="/root")

    async def talk(session: aiohttp.ClientSession) -> Any:
        async with session.ws_connect(ws_url(running, "/scope?a=1")) as ws:
            return json.loads(await ws.receive_str())

    scope = run_client(talk)
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/root/scope"
    assert scope["raw_path"] == "/root/scope"
    assert scope["query_string"] == "a=1"
    assert scope["root_path"] == "/root"
    assert scope["http_version"] == "1.1"
    assert scope["subprotocols"] == []
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert scope["asgi"]["version"] == "3.0"
    assert scope["has_method"] is False
    assert scope["client_is_tuple"] is True


def test_client_close_code_and_reason_reach_the_app(run_sidecar: Any) -> None:
    app = apps.WebSocketApp()
    running = run_sidecar(app)

    async def talk(session: aiohttp.ClientSession) -> None:
        ws = await session.ws_connect(ws_url(running, "/echo"))
        await ws.close(code=4321, message=b"client done")

    run_client(talk)
    assert app.disconnected.wait(30)
    assert app.disconnects[-1] == {"type": "websocket.disconnect", "code": 4321,
                                   "reason": "client done"}  # fmt: skip


def test_app_close_code_and_reason_reach_the_client(run_sidecar: Any) -> None:
    running = run_sidecar(apps.WebSocketApp())

    async def talk(session: aiohttp.ClientSession) -> tuple[Any, Any]:
        async with session.ws_connect(ws_url(running, "/echo")) as ws:
            await ws.send_str("close-me")
            message = await ws.receive()
            return message.type, (message.data, message.extra)

    kind, (code, reason) = run_client(talk)
    assert kind is aiohttp.WSMsgType.CLOSE
    assert (code, reason) == (4000, "bye")


@pytest.mark.parametrize(
    ("path", "status"), [("/deny", 403), ("/return-before-accept", 403), ("/raise-before", 500)]
)
def test_refusing_before_accept_is_an_http_error(run_sidecar: Any, path: str, status: int) -> None:
    running = run_sidecar(apps.WebSocketApp())

    async def talk(session: aiohttp.ClientSession) -> int:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(ws_url(running, path))
        return info.value.status

    assert run_client(talk) == status


def test_denial_response_extension(run_sidecar: Any) -> None:
    running = run_sidecar(apps.WebSocketApp())

    async def talk(session: aiohttp.ClientSession) -> tuple[int, str, bytes]:
        headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
        async with session.get(running.app("/deny-custom"), headers=headers) as response:
            return response.status, response.headers["x-reason"], await response.read()

    assert run_client(talk) == (401, "token", b"no entry")


def test_exception_after_accept_closes_with_1011(run_sidecar: Any) -> None:
    running = run_sidecar(apps.WebSocketApp())

    async def talk(session: aiohttp.ClientSession) -> int | None:
        async with session.ws_connect(ws_url(running, "/raise-after")) as ws:
            message = await ws.receive()
            assert message.type is aiohttp.WSMsgType.CLOSE
            return ws.close_code

    assert run_client(talk) == 1011


def test_invalid_websocket_message_is_a_named_error(run_sidecar: Any) -> None:
    app = apps.WebSocketApp()
    running = run_sidecar(app)

    async def talk(session: aiohttp.ClientSession) -> int | None:
        async with session.ws_connect(ws_url(running, "/bad-message")) as ws:
            await ws.receive()
            return ws.close_code

    assert run_client(talk) == 1011
    assert isinstance(app.errors[0], UnexpectedMessageError)


def test_message_larger_than_the_limit_closes_with_1009(run_sidecar: Any) -> None:
    app = apps.WebSocketApp()
    running = run_sidecar(app, server__ws_max_message_size=1024)

    async def talk(session: aiohttp.ClientSession) -> int | None:
        async with session.ws_connect(ws_url(running, "/echo")) as ws:
            await ws.send_bytes(b"x" * 4096)
            await ws.receive()
            return ws.close_code

    assert run_client(talk) == 1009
    assert app.disconnected.wait(30)
    assert app.disconnects[-1]["code"] == 1009


def test_shutdown_closes_open_websockets_with_1012(run_sidecar: Any) -> None:
    app = apps.WebSocketApp()
    running = run_sidecar(app, shutdown__graceful_timeout=30)
    connected = threading.Event()
    result: dict[str, Any] = {}

    async def talk(session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(ws_url(running, "/wait")) as ws:
            connected.set()
            message = await ws.receive()
            result["type"], result["code"] = message.type, ws.close_code

    client = threading.Thread(target=run_client, args=(talk,))
    client.start()
    assert connected.wait(30)
    assert app.accepted.wait(30)
    assert running.stop() is None  # promptly, not after the 30 s graceful timeout
    client.join(30)
    assert result == {"type": aiohttp.WSMsgType.CLOSE, "code": 1012}
    assert app.disconnects[-1]["code"] == 1012


def test_http_still_works_beside_websockets(run_sidecar: Any) -> None:
    from ..conftest import fetch

    running = run_sidecar(apps.WebSocketApp())
    assert fetch(running.app("/")).text == "ok"
