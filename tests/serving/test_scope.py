"""ASGI scopes from parsed requests, built without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.serving._aiohttp import RawRequestMessage, new_request_parser
from sidecar.serving.connection import HttpConnection
from sidecar.serving.scope import ScopeBuilder


def _parse(raw: bytes) -> RawRequestMessage:
    """Parse one request head with the same parser the app port uses."""

    async def parse() -> RawRequestMessage:
        loop = asyncio.get_running_loop()
        protocol: Any = HttpConnection.__new__(HttpConnection)  # only a parser owner here
        parser = new_request_parser(
            protocol, loop, max_line_size=8190, max_field_size=8190, max_headers=100, max_pending=4
        )
        messages, _, _ = parser.feed_data(raw)
        return messages[0][0]  # type: ignore[no-any-return]

    return asyncio.run(parse())


def _builder(**overrides: Any) -> ScopeBuilder:
    settings: dict[str, Any] = {"root_path": "", "tls": False, "trusted_proxies": "", "state": {}}
    settings.update(overrides)
    return ScopeBuilder(**settings)


CLIENT, SERVER = ("10.0.0.9", 51000), ("10.0.0.1", 8000)


def test_http_scope_fields() -> None:
    message = _parse(b"GET /a%20b/c?x=1&y=%32 HTTP/1.1\r\nHost: shop\r\nX-Trace: 1\r\n\r\n")
    state = {"db": "pool"}
    scope = _builder(state=state).http(message, "1.1", CLIENT, SERVER)
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert (scope["method"], scope["scheme"], scope["http_version"]) == ("GET", "http", "1.1")
    assert scope["path"] == "/a b/c"
    assert scope["raw_path"] == b"/a%20b/c"
    assert scope["query_string"] == b"x=1&y=%32"
    assert scope["headers"] == [(b"host", b"shop"), (b"x-trace", b"1")]
    assert (scope["client"], scope["server"]) == (CLIENT, SERVER)
    assert scope["state"] == state
    assert scope["state"] is not state
    assert scope["extensions"] == {"http.response.pathsend": {}}


def test_root_path_and_tls() -> None:
    message = _parse(b"GET /items HTTP/1.1\r\nHost: shop\r\n\r\n")
    scope = _builder(root_path="/api", tls=True).http(message, "1.1", CLIENT, SERVER)
    assert (scope["path"], scope["raw_path"], scope["root_path"]) == (
        "/api/items",
        b"/api/items",
        "/api",
    )
    assert scope["scheme"] == "https"


def test_absolute_form_target() -> None:
    message = _parse(b"GET http://shop/items?q=1 HTTP/1.1\r\nHost: shop\r\n\r\n")
    scope = _builder().http(message, "1.1", CLIENT, SERVER)
    assert (scope["path"], scope["query_string"]) == ("/items", b"q=1")


def test_proxy_headers_apply_only_from_a_trusted_peer() -> None:
    message = _parse(
        b"GET / HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n\r\n"
    )
    untrusted = _builder().http(message, "1.1", CLIENT, SERVER)
    assert (untrusted["client"], untrusted["scheme"]) == (CLIENT, "http")
    trusted = _builder(trusted_proxies="10.0.0.0/8").http(message, "1.1", CLIENT, SERVER)
    assert (trusted["client"], trusted["scheme"]) == (("203.0.113.7", 0), "https")
    assert (b"host", b"shop.example") in trusted["headers"]


def test_a_forwarded_host_outside_latin1_is_refused() -> None:
    message = _parse(
        "GET / HTTP/1.1\r\nHost: x\r\nForwarded: for=1.2.3.4;host=書店.example\r\n\r\n".encode()
    )
    with pytest.raises(UnicodeEncodeError):
        _builder(trusted_proxies="*").http(message, "1.1", CLIENT, SERVER)


def test_websocket_scope() -> None:
    message = _parse(
        b"GET /ws HTTP/1.1\r\nHost: shop\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Protocol: v2\r\n\r\n"
    )
    scope = _builder(tls=True).websocket(message, "1.1", CLIENT, SERVER)
    assert scope["type"] == "websocket"
    assert "method" not in scope
    assert scope["scheme"] == "wss"
    assert scope["subprotocols"] == ["chat", "superchat", "v2"]
    assert scope["extensions"] == {"websocket.http.response": {}}
