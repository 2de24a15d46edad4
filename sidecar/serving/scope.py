"""ASGI scopes from parsed requests: path, query, client, scheme, and trusted proxy headers."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from ._aiohttp import RawRequestMessage
from .proxy import TrustedProxies, parse_forwarded, parse_x_forwarded

# HTTP spec 2.4: send() after the client has gone raises an OSError subclass.
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
HTTP_VERSIONS = {(1, 1): "1.1", (1, 0): "1.0"}

Address = tuple[str, int] | None


class ScopeBuilder:
    """Build the scopes of one app port (its root path, scheme and trusted proxies)."""

    def __init__(
        self, *, root_path: str, tls: bool, trusted_proxies: str, state: dict[str, Any]
    ) -> None:
        self._root_path = root_path
        self._scheme = "https" if tls else "http"
        self._proxies = TrustedProxies(trusted_proxies)
        self._state = state

    def http(
        self, message: RawRequestMessage, version: str, client: Address, server: Address
    ) -> dict[str, Any]:
        """The ``http`` scope of a request; raise ``UnicodeEncodeError`` for a bad host.

        Scope strings must fit in latin-1 bytes; a trusted proxy's forwarded host in
        UTF-8 does not.
        """
        target: str = message.path
        raw, _, query = target.partition("?")
        if not raw.startswith("/"):  # absolute-form target (a client talking to a proxy)
            raw = message.url.raw_path
            query = message.url.raw_query_string
        path = unquote(raw) if "%" in raw else raw
        root = self._root_path
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": version,
            "method": message.method,
            "scheme": self._scheme,
            "path": root + path if root else path,
            "raw_path": (root + raw if root else raw).encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": root,
            "headers": [(name.lower(), value) for name, value in message.raw_headers],
            "client": client,
            "server": server,
            "state": self._state.copy(),
            "extensions": {"http.response.pathsend": {}},
        }
        if self._proxies.enabled and client is not None and self._proxies.trusts(client[0]):
            self._apply_proxy_headers(scope, message.headers)
        return scope

    def websocket(
        self, message: RawRequestMessage, version: str, client: Address, server: Address
    ) -> dict[str, Any]:
        """The ``websocket`` scope of an upgrade request."""
        scope = self.http(message, version, client, server)
        del scope["method"]
        scope["type"] = "websocket"
        scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
        scope["subprotocols"] = [
            token.strip()
            for value in message.headers.getall("Sec-WebSocket-Protocol", ())
            for token in value.split(",")
            if token.strip()
        ]
        scope["extensions"] = {"websocket.http.response": {}}
        return scope

    def _apply_proxy_headers(self, scope: dict[str, Any], headers: Any) -> None:
        """Take client, scheme and host from a trusted proxy's forwarding headers."""
        forwarded = headers.getall("Forwarded", ())
        if forwarded:
            hops = parse_forwarded(forwarded)
        else:
            hops = parse_x_forwarded(
                headers.getall("X-Forwarded-For", ()),
                headers.getall("X-Forwarded-Proto", ()),
                headers.getall("X-Forwarded-Host", ()),
            )
        hop = self._proxies.resolve(hops)
        if hop is None:
            return
        if hop.address:
            scope["client"] = (hop.address, hop.port)
        if hop.proto is not None and hop.proto.lower() in ("http", "https"):
            scope["scheme"] = hop.proto.lower()
        if hop.host:
            host = hop.host.encode("latin-1")
            scope["headers"] = [
                (name, host if name == b"host" else value) for name, value in scope["headers"]
            ]
