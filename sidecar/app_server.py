"""Serve an ASGI app's traffic on aiohttp's low-level server.

aiohttp parses HTTP/1.1 (its C parser), manages connections, keep-alive, pipelining
and flow control; this module binds the app port, turns each parsed request into an
ASGI scope and hands it to an exchange (``exchange.HttpExchange``) that carries the
app's messages. It uses ``web.Server`` directly, not the routing ``web.Application``:
no router, no middleware chain.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from functools import partial
from typing import Any, cast
from urllib.parse import unquote

from aiohttp import web
from aiohttp.web_request import BaseRequest

from .config import ServerConfig
from .errors import BindError
from .exchange import (
    ASGI_VERSION,
    CLOSE,
    DISCONNECT_GRACE,
    HTTP_VERSIONS,
    KEEP_ALIVE,
    AsgiRequest,
    ClientDisconnected,
    HttpExchange,
)
from .metrics import Metrics
from .types import ASGIApp
from .websocket import WebSocketSession, WebSocketSettings

logger = logging.getLogger("sidecar.app")
access_logger = logging.getLogger("sidecar.access")


def _settle(future: asyncio.Future[None], _: object) -> None:
    if not future.done():
        future.set_result(None)


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
        self._root_path = config.root_path
        self._server: asyncio.AbstractServer | None = None
        self._web_server: web.Server | None = None
        self._active: set[HttpExchange] = set()
        self._websockets: set[WebSocketSession] = set()
        self._ws_settings = WebSocketSettings(
            ping_interval=config.ws_ping_interval, max_message_size=config.ws_max_message_size
        )
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._websocket_close_code = websocket_close_code
        self.address: tuple[str, int] | None = None
        #: Requests still running when the graceful timeout ran out, cut by ``stop()``.
        self.aborted = 0

    @property
    def in_flight(self) -> int:
        return len(self._active)

    async def start(self) -> None:
        """Bind the listening socket; raise ``BindError`` when that is impossible."""
        loop = asyncio.get_running_loop()
        self._web_server = web.Server(
            self._handle,
            request_factory=self._make_request,
            keepalive_timeout=self._config.keep_alive_timeout,
            access_log=None,
        )
        host, port = self._config.host, self._config.port
        try:
            self._server = await loop.create_server(
                self._web_server, host, port, backlog=self._config.backlog, reuse_address=True
            )
        except OSError as exc:
            raise BindError(
                f"cannot bind the app port {host}:{port} (server.host/server.port): "
                f"{exc.strerror or exc}"
            ) from exc
        sock: socket.socket = self._server.sockets[0]
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])

    def _make_request(
        self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> AsgiRequest:
        return AsgiRequest(message, payload, protocol, writer, task, asyncio.get_running_loop())

    def _scope(self, request: AsgiRequest, version: str) -> dict[str, Any]:
        message = request._message
        target: str = message.path
        raw, _, query = target.partition("?")
        if not raw.startswith("/"):  # absolute-form target (a client talking to a proxy)
            raw = request.rel_url.raw_path
            query = request.rel_url.raw_query_string
        path = unquote(raw) if "%" in raw else raw
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        local = transport.get_extra_info("sockname") if transport is not None else None
        root = self._root_path
        return {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": version,
            "method": message.method,
            "scheme": "http",
            "path": root + path if root else path,
            "raw_path": (root + raw if root else raw).encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": root,
            "headers": [(name.lower(), value) for name, value in message.raw_headers],
            "client": (peer[0], peer[1]) if isinstance(peer, tuple) else None,
            "server": (local[0], local[1]) if isinstance(local, tuple) else None,
            "state": self._state.copy(),
        }

    async def _handle(self, base_request: BaseRequest) -> web.StreamResponse:
        request = cast(AsgiRequest, base_request)  # built by _make_request
        started_at = time.perf_counter()
        message = request._message
        version = HTTP_VERSIONS.get((message.version[0], message.version[1]), "1.1")
        if message.upgrade and message.headers.get("Upgrade", "").lower() == "websocket":
            return await self._handle_websocket(request, version)
        keep_alive = not message.should_close and not self._closing
        exchange = HttpExchange(request, version, keep_alive)
        request.exchange = exchange
        self._active.add(exchange)
        self._idle.clear()
        stats = self._stats
        if stats is not None:
            stats.in_flight += 1
        scope = self._scope(request, version)
        # The app runs in a task of its own and the connection moves on once the response
        # is complete: work the app does afterwards (background tasks) must not hold up
        # the next request on a keep-alive connection. stop() still waits for that work.
        loop = asyncio.get_running_loop()
        responded = exchange.responded = loop.create_future()
        call = loop.create_task(self._call(request, exchange, scope, version, started_at))
        exchange.task = call
        call.add_done_callback(partial(_settle, responded))
        try:
            await responded
        except asyncio.CancelledError:
            call.cancel()
            raise
        return KEEP_ALIVE if exchange.keep_alive and exchange.complete else CLOSE

    async def _call(
        self,
        request: AsgiRequest,
        exchange: HttpExchange,
        scope: dict[str, Any],
        version: str,
        started_at: float,
    ) -> None:
        """Run the app on one request to its end, then log and count the request."""
        message = request._message
        stats = self._stats
        try:
            await self._app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if exchange.disconnected and isinstance(exc, ClientDisconnected):
                logger.debug("client left during %s %s", request.method, scope["path"])
            else:
                logger.exception(
                    "exception in ASGI app while handling %s %s", request.method, scope["path"]
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
                    request.method,
                    scope["path"],
                )
                exchange.fail()
        finally:
            self._active.discard(exchange)
            if not self._active:
                self._idle.set()
            request.exchange = None
        elapsed = time.perf_counter() - started_at
        status = exchange.status if exchange.started else (499 if exchange.disconnected else 500)
        if stats is not None:
            stats.in_flight -= 1
            stats.observe(request.method, status, elapsed)
        if self._access_log:
            client = scope["client"]
            access_logger.info(
                '%s - "%s %s HTTP/%s" %d %.1fms',
                client[0] if client else "-",
                request.method,
                message.path,
                version,
                status,
                elapsed * 1000,
            )

    async def _handle_websocket(self, request: AsgiRequest, version: str) -> web.StreamResponse:
        scope = self._scope(request, version)
        del scope["method"]
        scope["type"] = "websocket"
        scope["scheme"] = "ws"
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
        if self._server is not None:
            self._server.close()
        web_server = self._web_server
        if web_server is None:
            return
        web_server.pre_shutdown()
        # Long-lived exchanges end now rather than at the graceful timeout: apps waiting
        # in receive() (server-sent events, long polls) get http.disconnect, and open
        # WebSockets get the configured close code.
        for exchange in self._active:
            exchange.end_listening()
        if self._websockets:
            code = self._websocket_close_code
            closing = [session.shutdown(code) for session in list(self._websockets)]
            await asyncio.wait(
                [asyncio.ensure_future(c) for c in closing], timeout=max(graceful_timeout, 0.1)
            )
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
        await web_server.shutdown(timeout=0.1)
        if self._server is not None:
            await self._server.wait_closed()
