"""Serve an ASGI app's traffic on the app port.

``connection.HttpConnection`` parses requests with aiohttp's HTTP/1.1 parser and keeps
connections alive; this module binds the port, turns each request into an ASGI scope,
runs the app on it (one task per request) with an exchange (``exchange.HttpExchange``)
carrying the app's messages, and refuses what must not reach the app. WebSocket
connections are served by aiohttp's low-level ``web.Server`` (no router, no
middleware), which the connection hands them to after their upgrade request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Any, cast
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_request import BaseRequest

from .config import ServerConfig
from .connection import Connections, ConnectionSettings, HttpConnection, address
from .errors import BindError, ConfigError
from .exchange import (
    ASGI_VERSION,
    CLOSE,
    DISCONNECT_GRACE,
    HTTP_VERSIONS,
    AsgiRequest,
    BodyLimits,
    ClientDisconnected,
    HttpExchange,
)
from .metrics import Metrics
from .proxy import TrustedProxies, parse_forwarded, parse_x_forwarded
from .types import ASGIApp
from .websocket import WebSocketSession, WebSocketSettings

logger = logging.getLogger("sidecar.app")
access_logger = logging.getLogger("sidecar.access")


class AppServer:
    """Bind the app port and bridge its requests to the ASGI app."""

    def __init__(
        self,
        config: ServerConfig,
        app: ASGIApp,
        state: dict[str, Any],
        *,
        metrics: Metrics | None = None,
        access_log: bool = False,
        websocket_close_code: int = 1012,
    ) -> None:
        self._config = config
        self._app = app
        self._state = state
        self._stats = metrics.requests if metrics is not None else None
        self._access_log = access_log
        self._record_requests = access_log or self._stats is not None
        # Bound once: a bound method built per request shows up in the request path.
        self._on_complete = self._completed if self._record_requests else None
        self._root_path = config.root_path
        self._body_limits = BodyLimits(config.max_body_size, config.body_timeout)
        self._max_in_flight = config.max_requests_in_flight
        self._max_body = config.max_body_size
        self._proxies = TrustedProxies(config.trusted_proxies)
        self._scheme = "https" if config.tls_certfile else "http"
        self._server: asyncio.AbstractServer | None = None
        self._connections: Connections | None = None
        self._ws_server: web.Server | None = None
        self._active: set[HttpExchange] = set()
        self._websockets: set[WebSocketSession] = set()
        self._ws_settings = WebSocketSettings(
            ping_interval=config.ws_ping_interval, max_message_size=config.ws_max_message_size
        )
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._ending_streams = False
        self._websocket_close_code = websocket_close_code
        self.address: tuple[str, int] | None = None
        #: Requests still running when the graceful timeout ran out, cut by ``stop()``.
        self.aborted = 0

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def connections_open(self) -> int:
        """Open client connections (read from the admin thread at scrape time)."""
        connections, ws_server = self._connections, self._ws_server
        total = len(connections.open) if connections is not None else 0
        return total + (len(ws_server.connections) if ws_server is not None else 0)

    @property
    def connections(self) -> Connections | None:
        """The HTTP connections of the app port (None before ``start``)."""
        return self._connections

    @property
    def websocket_connections(self) -> int:
        return len(self._websockets)

    async def wait_idle(self) -> None:
        """Return once no HTTP request is in flight."""
        await self._idle.wait()

    async def start(self) -> None:
        """Bind the listening socket; raise ``BindError`` when that is impossible."""
        loop = asyncio.get_running_loop()
        config = self._config
        self._ws_server = ws_server = web.Server(
            self._handle_upgrade,
            request_factory=self._make_request,
            keepalive_timeout=config.keep_alive_timeout,
            access_log=None,
            max_line_size=config.max_request_line,
            max_field_size=config.max_header_size,
            max_headers=config.max_headers,
            auto_decompress=False,
        )
        self._connections = Connections(
            ConnectionSettings(
                keep_alive_timeout=config.keep_alive_timeout,
                header_timeout=config.header_timeout,
                max_connections=config.max_connections,
                max_request_line=config.max_request_line,
                max_header_size=config.max_header_size,
                max_headers=config.max_headers,
                body_limits=self._body_limits,
            ),
            self,
            others=lambda: len(ws_server.connections),
        )
        host, port = self._config.host, self._config.port
        tls = self._tls_context()
        try:
            self._server = await loop.create_server(
                self._connections,
                host,
                port,
                backlog=self._config.backlog,
                reuse_address=True,
                ssl=tls,
            )
        except OSError as exc:
            raise BindError(
                f"cannot bind the app port {host}:{port} (server.host/server.port): "
                f"{exc.strerror or exc}"
            ) from exc
        sock: socket.socket = self._server.sockets[0]
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])

    def _tls_context(self) -> ssl.SSLContext | None:
        config = self._config
        if not config.tls_certfile:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(config.tls_certfile, config.tls_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                [
                    f"cannot load the TLS certificate {config.tls_certfile!r} with key "
                    f"{config.tls_keyfile!r} (server.tls_certfile/tls_keyfile): {exc}"
                ]
            ) from exc
        return context

    def _make_request(
        self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> AsgiRequest:
        return AsgiRequest(message, payload, protocol, writer, task, asyncio.get_running_loop())

    def _scope(
        self,
        message: RawRequestMessage,
        version: str,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
    ) -> dict[str, Any]:
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

    def dispatch(self, exchange: HttpExchange, over_cap: bool) -> None:
        """Run the app on a request a connection received, or refuse it (returns at once).

        The app runs in a task of its own; the connection moves on once the response is
        complete, so work the app does afterwards (background tasks) does not hold up
        the next request on a keep-alive connection. ``stop()`` still waits for it.
        """
        if self._closing:
            exchange.keep_alive = False
        refusal = None
        limit = self._max_in_flight
        if (
            over_cap
            or (limit and len(self._active) >= limit)
            or (self._max_body and exchange.payload is not EMPTY_PAYLOAD)
        ):
            refusal = self._refusal(exchange, over_cap)
        if refusal is not None:
            status, extra = refusal
            if status == 413:  # an over-cap connection is already not kept alive
                exchange.keep_alive = False
            if self._stats is not None:
                self._stats.observe(exchange.message.method, status, 0.0)
            exchange.fail(status, extra)
            if self._access_log:  # refused requests appear in the access log too
                self._log_access(exchange, status, time.perf_counter() - exchange.started_at)
            return
        connection = cast(HttpConnection, exchange.connection)  # the only caller
        message = exchange.message
        try:
            scope = self._scope(message, exchange.version, connection.client, connection.server)
        except UnicodeEncodeError as exc:
            # Scope strings must fit in latin-1 bytes; a trusted proxy's forwarded host
            # in UTF-8 does not.
            logger.info("refusing %s %s: %s", message.method, message.path, exc)
            exchange.keep_alive = False
            exchange.fail(400)
            return
        except Exception:
            logger.exception("cannot build the scope of %s %s", message.method, message.path)
            exchange.keep_alive = False
            exchange.fail(500)
            return
        if self._ending_streams:
            exchange.end_listening()
        active = self._active
        if not active:
            self._idle.clear()
        active.add(exchange)
        stats = self._stats
        if stats is not None:
            stats.in_flight += 1
        exchange.on_complete = self._on_complete
        exchange.task = asyncio.get_running_loop().create_task(self._call(exchange, scope))

    async def _call(self, exchange: HttpExchange, scope: dict[str, Any]) -> None:
        """Run the app on one request to its end; count it if no response completed."""
        method = scope["method"]
        try:
            await self._app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if exchange.disconnected and isinstance(exc, ClientDisconnected):
                logger.debug("client left during %s %s", method, scope["path"])
            else:
                logger.exception(
                    "exception in ASGI app while handling %s %s", method, scope["path"]
                )
            exchange.fail()
        else:
            if not exchange.complete and exchange.ended_by_server and not exchange.started:
                # The app stopped because the server told it the exchange was over.
                exchange.fail(503)
            elif not exchange.complete and not exchange.disconnected:
                logger.error(
                    "ASGI app returned %s the response to %s %s",
                    "before finishing" if exchange.started else "without sending",
                    method,
                    scope["path"],
                )
                exchange.fail()
        finally:
            self._active.discard(exchange)
            if not self._active:
                self._idle.set()
        if self._record_requests and not exchange.recorded:
            exchange.recorded = True
            self._completed(exchange)  # no response reached the client

    def _refusal(
        self, exchange: HttpExchange, over_cap: bool
    ) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        """Refuse a request before the app sees it: overload (503) or a body too large (413)."""
        message = exchange.message
        if over_cap:
            logger.warning(
                "refusing %s %s: more than %d connections open (server.max_connections)",
                message.method,
                message.path,
                self._config.max_connections,
            )
            return 503, [(b"retry-after", b"1")]
        limit = self._max_in_flight
        if limit and len(self._active) >= limit:
            logger.warning(
                "refusing %s %s: %d requests in flight (server.max_requests_in_flight)",
                message.method,
                message.path,
                len(self._active),
            )
            return 503, [(b"retry-after", b"1")]
        max_body = self._max_body
        if max_body and exchange.payload is not EMPTY_PAYLOAD:
            length = message.headers.get("Content-Length")
            # The parser has checked that a content-length is a number.
            if length is not None and int(length) > max_body:
                logger.info(
                    "refusing %s %s: content-length %s exceeds server.max_body_size (%d)",
                    message.method,
                    message.path,
                    length,
                    max_body,
                )
                return 413, []
        return None

    def _completed(self, exchange: HttpExchange) -> None:
        """Count the request and write its access log line, as its response completes.

        Runs exactly once per request, before the last bytes leave, so a client that has
        its response also sees it counted (and no longer in flight) on /metrics.
        """
        elapsed = time.perf_counter() - exchange.started_at
        message = exchange.message
        status = exchange.status if exchange.started else (499 if exchange.disconnected else 500)
        stats = self._stats
        if stats is not None:
            stats.in_flight -= 1
            stats.observe(message.method, status, elapsed)
        if self._access_log:
            self._log_access(exchange, status, elapsed)

    def _log_access(self, exchange: HttpExchange, status: int, elapsed: float) -> None:
        connection = exchange.connection
        client = connection.client if isinstance(connection, HttpConnection) else None
        message = exchange.message
        access_logger.info(
            '%s - "%s %s HTTP/%s" %d %.1fms',
            client[0] if client is not None else "-",
            message.method,
            message.path,
            exchange.version,
            status,
            elapsed * 1000,
        )

    def hand_off(self, transport: asyncio.Transport, data: bytes) -> None:
        """Serve a connection on aiohttp's server from here on (a WebSocket upgrade).

        ``data`` is the upgrade request's head followed by whatever the client sent after
        it; aiohttp parses it again and does the handshake.
        """
        ws_server = self._ws_server
        assert ws_server is not None
        handler = ws_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(data)

    async def _handle_upgrade(self, base_request: BaseRequest) -> web.StreamResponse:
        request = cast(AsgiRequest, base_request)  # built by _make_request
        message = request._message
        version = HTTP_VERSIONS.get(message.version, "1.1")  # HttpVersion is a tuple
        if not (message.upgrade and message.headers.get("Upgrade", "").lower() == "websocket"):
            # Only upgrade requests are handed over, and the connection closes after the
            # WebSocket; anything else here is a client talking past the close.
            return CLOSE
        return await self._handle_websocket(request, version)

    async def _handle_websocket(self, request: AsgiRequest, version: str) -> web.StreamResponse:
        transport = request.transport
        scope = self._scope(
            request._message,
            version,
            address(transport, "peername") if transport is not None else None,
            address(transport, "sockname") if transport is not None else None,
        )
        del scope["method"]
        scope["type"] = "websocket"
        scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
        scope["subprotocols"] = [
            token.strip()
            for value in request.headers.getall("Sec-WebSocket-Protocol", ())
            for token in value.split(",")
            if token.strip()
        ]
        scope["extensions"] = {"websocket.http.response": {}}
        session = WebSocketSession(request, self._ws_settings, version)
        # Before the handshake, a lost connection must wake an app waiting in receive().
        request.exchange = session.handshake
        self._websockets.add(session)
        error: BaseException | None = None
        try:
            await self._app(scope, session.receive, session.send)
        except Exception as exc:
            error = exc
            if isinstance(exc, ClientDisconnected):
                logger.debug("websocket client left during %s", scope["path"])
            else:
                logger.exception("exception in ASGI app on websocket %s", scope["path"])
        finally:
            self._websockets.discard(session)
            request.exchange = None
        return await session.finish(error)

    async def end_streams(self, limit: float) -> None:
        """End the exchanges that only end when told: the drain is over for them.

        Apps waiting in ``receive()`` (server-sent events, long polls), now and from now
        on, get ``http.disconnect``; open WebSockets get the configured close code (each
        close waits at most ``limit`` seconds for the peer's answer).
        """
        self._ending_streams = True
        for exchange in self._active:
            exchange.end_listening()
        if self._websockets:
            code = self._websocket_close_code
            closing = [session.shutdown(code) for session in list(self._websockets)]
            await asyncio.wait([asyncio.ensure_future(c) for c in closing], timeout=max(limit, 0.1))

    async def stop(
        self, graceful_timeout: float, *, cut_short: asyncio.Event | None = None
    ) -> None:
        """Stop accepting, let in-flight requests finish, then cut what is left.

        Order: (1) close the listening socket so no new connection is accepted;
        (2) close idle keep-alive connections at once; busy ones answer their current
        request with ``connection: close``; (3) wait up to ``graceful_timeout`` (or until
        ``cut_short`` is set) for in-flight requests; (4) tell the remaining requests the
        client is gone (the app receives ``http.disconnect``) and cancel what still runs.
        """
        self._closing = True
        # Responses not yet started say "connection: close": the client must not send
        # its next request on a connection to a pod that is leaving.
        for exchange in self._active:
            exchange.keep_alive = False
        if self._server is not None:
            self._server.close()
        connections, ws_server = self._connections, self._ws_server
        if connections is None or ws_server is None:
            return
        connections.close_idle()
        ws_server.pre_shutdown()
        await self.end_streams(graceful_timeout)
        if self._active:
            waiters = {asyncio.ensure_future(self._idle.wait())}
            if cut_short is not None:
                waiters.add(asyncio.ensure_future(cut_short.wait()))
            _, pending = await asyncio.wait(
                waiters, timeout=graceful_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
            remaining = list(self._active)
            if remaining:
                self.aborted += len(remaining)
                logger.warning(
                    "cancelling %d request(s) still running after the graceful timeout (%gs)",
                    len(remaining),
                    graceful_timeout,
                )
                # Tell the app first: a handler awaiting receive() ends cleanly on
                # http.disconnect. Whatever still runs after a short grace is cancelled.
                for exchange in remaining:
                    exchange.disconnect()
                try:
                    async with asyncio.timeout(DISCONNECT_GRACE):
                        await self._idle.wait()
                except TimeoutError:
                    # The connection's task awaits the request's task, so cancelling
                    # it cancels the app call too.
                    for exchange in list(self._active):
                        exchange.cancel()
        connections.close_all()
        await ws_server.shutdown(timeout=0.1)
        if self._server is not None:
            await self._server.wait_closed()
