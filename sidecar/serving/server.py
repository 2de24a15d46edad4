"""Serve an ASGI app's traffic on the app port.

``connection.HttpConnection`` parses requests with aiohttp's HTTP/1.1 parser and keeps
connections alive; ``listen`` binds the port; this module turns each request into an ASGI scope
(``scope.ScopeBuilder``), runs the app on it (one task per request) with an exchange
(``exchange.HttpExchange``) carrying the app's messages, and refuses what must not reach
the app. WebSocket connections are served by aiohttp's low-level ``web.Server`` (no
router, no middleware), which the connection hands them to after their upgrade request.

Stopping is a sequence the runner owns; this module offers its steps, each bounded by a
deadline on the loop's clock that the runner computed once: ``end_streams``,
``close_listener``, ``wait_idle(deadline)``, ``cut`` and ``close``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from ..aio import first_of
from ..config import ServerConfig
from ..config.schema import ACCESS_LOG_FORMAT
from ..errors import ClientDisconnected
from ..metrics import Metrics
from ..types import ASGIApp
from ._aiohttp import EMPTY_PAYLOAD, AsgiRequest, finished, websocket_server
from .access import REQUEST_ID_HEADER, UNMATCHED, AccessLog, access_record, request_id, route_of
from .connection import Connections, ConnectionSettings, address
from .exchange import HttpExchange
from .listen import listen, remove_socket_file
from .response import RETRY_AFTER
from .scope import HTTP_VERSIONS, ScopeBuilder
from .websocket import WebSocketSession, WebSocketSettings

logger = logging.getLogger("sidecar.app")
access_logger = logging.getLogger("sidecar.access")

# When the graceful deadline has passed, what still runs is told that the client is
# gone (a handler waiting in receive() ends cleanly on http.disconnect) and gets half of
# this to end on its own; then it is cancelled and gets the rest to unwind.
CUT_GRACE = 1.0


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
        access_log_format: str = ACCESS_LOG_FORMAT,
        websocket_close_code: int,
    ) -> None:
        self._config = config
        self._app = app
        self._stats = metrics.requests if metrics is not None else None
        self._root_path = config.root_path
        self._access = AccessLog(access_logger, access_log_format) if access_log else None
        # Bound once: a bound method built per request shows up in the request path.
        self._on_complete = self._completed if access_log or self._stats is not None else None
        self._on_end = self._ended
        self._scopes = ScopeBuilder(
            root_path=config.root_path,
            tls=bool(config.tls_certfile),
            trusted_proxies=config.trusted_proxies,
            state=state,
        )
        self._max_in_flight = config.max_requests_in_flight
        self._max_body = config.max_body_size
        self._server: asyncio.AbstractServer | None = None
        self._connections: Connections | None = None
        self._ws_server: web.Server | None = None
        self._active: set[HttpExchange] = set()
        self._websockets: set[WebSocketSession] = set()
        # The tasks running the app on each WebSocket (aiohttp's handler tasks).
        self._websocket_calls: set[asyncio.Task[Any]] = set()
        self._ws_settings = WebSocketSettings(
            ping_interval=config.ws_ping_interval, max_message_size=config.ws_max_message_size
        )
        self._closing_sessions: set[asyncio.Task[None]] = set()
        # Set while no HTTP request is being served, and while no WebSocket is.
        self._requests_idle = asyncio.Event()
        self._requests_idle.set()
        self._websockets_idle = asyncio.Event()
        self._websockets_idle.set()
        self._closing = False
        self._ending_streams = False
        self._websocket_close_code = websocket_close_code
        self.address: tuple[str, int] | None = None
        #: Where the app port listens, for people: ``http://host:port`` or ``unix:path``.
        self.url = "http://?"
        #: Requests still running at the graceful deadline, cut by ``cut()``: answered 503
        #: before their response started, and cut during it.
        self.aborted = 0
        self.aborted_unanswered = 0
        #: Requests the app ran on (what ``server.max_requests`` counts).
        self.served = 0

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

    @property
    def busy(self) -> bool:
        """Whether an HTTP request or a WebSocket is being served."""
        return bool(self._active or self._websockets)

    def connection_factory(self) -> Connections:
        """The protocol factory of the app port's connections (``start`` binds it)."""
        config = self._config
        if self._ws_server is None:
            self._ws_server = websocket_server(
                self._handle_upgrade,
                keepalive_timeout=config.keep_alive_timeout,
                max_line_size=config.max_request_line,
                max_field_size=config.max_header_size,
                max_headers=config.max_headers,
            )
        if self._connections is None:
            ws_server = self._ws_server
            self._connections = Connections(
                ConnectionSettings.from_config(config),
                self,
                others=lambda: len(ws_server.connections),
            )
        return self._connections

    async def start(self) -> None:
        """Listen on the app port (``listen``); raise ``BindError`` when that is impossible."""
        self._server, self.address, self.url = await listen(self._config, self.connection_factory())

    # -- HTTP requests ------------------------------------------------------------------

    def dispatch(self, exchange: HttpExchange, over_cap: bool) -> None:
        """Run the app on a request a connection received, or refuse it (returns at once).

        The app runs in a task of its own; the connection moves on once the response is
        complete, so work the app does afterwards (background tasks) does not hold up
        the next request on a keep-alive connection. Stopping still waits for it.
        """
        if self._closing:
            exchange.close_connection()
        generated: bytes | None = None
        if self._access is not None:
            # Every logged request has an id, and its response tells the client which.
            value, made = request_id(exchange.message.headers.get("X-Request-Id"))
            exchange.set_request_id(value)
            if made:
                generated = value.encode("ascii")
        limit = self._max_in_flight
        if (
            over_cap
            or (limit and len(self._active) >= limit)
            or (self._max_body and exchange.payload is not EMPTY_PAYLOAD)
        ) and self._refused(exchange, over_cap):
            return
        message = exchange.message
        try:
            scope = self._scopes.http(message, exchange.version, exchange.client, exchange.server)
        except UnicodeEncodeError as exc:
            logger.info("refusing %s %s: %s", message.method, message.path, exc)
            self._refuse(exchange, 400, close=True)
            return
        except Exception:
            logger.exception("cannot build the scope of %s %s", message.method, message.path)
            self._refuse(exchange, 500, close=True)
            return
        if generated is not None:
            # The app sees the id the access log and the client see.
            scope["headers"].append((REQUEST_ID_HEADER, generated))
        if self._ending_streams:
            exchange.end_listening()
        active = self._active
        if not active:
            self._requests_idle.clear()
        active.add(exchange)
        stats = self._stats
        if stats is not None:
            stats.in_flight += 1
        exchange.run(self._app, scope, on_complete=self._on_complete, on_end=self._on_end)

    def _ended(self, exchange: HttpExchange) -> None:
        self.served += 1
        active = self._active
        active.discard(exchange)
        if not active:
            self._requests_idle.set()

    def _refused(self, exchange: HttpExchange, over_cap: bool) -> bool:
        """Refuse a request before the app sees it: overload (503) or a body too large (413).

        Returns whether it was refused.
        """
        message = exchange.message
        if over_cap:
            logger.warning(
                "refusing %s %s: more than %d connections open (server.max_connections)",
                message.method,
                message.path,
                self._config.max_connections,
            )
            # An over-cap connection is already not kept alive.
            self._refuse(exchange, 503, [RETRY_AFTER], close=False)
            return True
        limit = self._max_in_flight
        if limit and len(self._active) >= limit:
            logger.warning(
                "refusing %s %s: %d requests in flight (server.max_requests_in_flight)",
                message.method,
                message.path,
                len(self._active),
            )
            self._refuse(exchange, 503, [RETRY_AFTER], close=False)
            return True
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
                self._refuse(exchange, 413, close=True)
                return True
        return False

    def _refuse(
        self,
        exchange: HttpExchange,
        status: int,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        close: bool,
    ) -> None:
        """Answer for the app and count it; refused requests are in the access log too."""
        if self._stats is not None:
            self._stats.observe(exchange.message.method, UNMATCHED, status, 0.0)
        exchange.fail(status, headers, close=close)
        if self._access is not None:
            self._log_access(exchange, status, time.perf_counter() - exchange.started_at)

    def _completed(self, exchange: HttpExchange) -> None:
        """Count the request and write its access log line, as its response completes.

        Runs exactly once per request the app ran on, before the last bytes leave, so a
        client that has its response also sees it counted (and no longer in flight) on
        /metrics.
        """
        elapsed = time.perf_counter() - exchange.started_at
        status = exchange.status if exchange.started else (499 if exchange.disconnected else 500)
        stats = self._stats
        if stats is not None:
            stats.in_flight -= 1
            scope = exchange.scope
            # Most apps without a router set neither key: skip the call for them.
            if scope is not None and ("route" in scope or "path_template" in scope):
                route = route_of(scope, self._root_path)
            else:
                route = UNMATCHED
            stats.observe(exchange.message.method, route, status, elapsed)
        if self._access is not None:
            self._log_access(exchange, status, elapsed)

    def _log_access(self, exchange: HttpExchange, status: int, elapsed: float) -> None:
        access = self._access
        if access is None:  # pragma: no cover - called only with the access log on
            return
        message = exchange.message
        access.write(
            access_record(
                method=message.method,
                target=message.path,
                version=exchange.version,
                headers=message.headers,
                scope=exchange.scope,
                client=exchange.client,
                status=status,
                seconds=elapsed,
                sent=exchange.bytes_sent,
                request_id=exchange.request_id,
                root_path=self._root_path,
            )
        )

    # -- WebSockets ---------------------------------------------------------------------

    def hand_off(self, transport: asyncio.Transport, data: bytes) -> None:
        """Serve a connection on aiohttp's server from here on (a WebSocket upgrade).

        ``data`` is the upgrade request's head followed by whatever the client sent after
        it; aiohttp parses it again and does the handshake.
        """
        ws_server = self._ws_server
        if ws_server is None:  # pragma: no cover - connections exist only after start()
            raise RuntimeError("hand_off before the server started")
        handler = ws_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(data)

    async def _handle_upgrade(self, request: AsgiRequest) -> web.StreamResponse:
        message = request.raw_message
        if not (message.upgrade and message.headers.get("Upgrade", "").lower() == "websocket"):
            # Only upgrade requests are handed over, and the connection closes after the
            # WebSocket; anything else here is a client talking past the close.
            return finished()
        version = HTTP_VERSIONS.get(message.version, "1.1")  # HttpVersion is a tuple
        transport = request.transport
        scope = self._scopes.websocket(
            message,
            version,
            address(transport, "peername") if transport is not None else None,
            address(transport, "sockname") if transport is not None else None,
        )
        session = WebSocketSession(request, self._ws_settings, version)
        # Before the handshake, a lost connection must wake an app waiting in receive().
        request.exchange = session.handshake
        self._websockets.add(session)
        self._websockets_idle.clear()
        call = asyncio.current_task()
        if call is not None:
            self._websocket_calls.add(call)
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
            if call is not None:
                self._websocket_calls.discard(call)
            request.exchange = None
            if not self._websockets:
                self._websockets_idle.set()
        return await session.finish(error)

    # -- stopping: the steps of the runner's sequence -------------------------------------

    def end_streams(self) -> None:
        """End the exchanges that only end when told: the drain is over for them.

        Apps waiting in ``receive()`` (server-sent events, long polls), now and from now
        on, get ``http.disconnect``; open WebSockets are sent the configured close code
        (``wait_idle`` waits for their close handshakes).
        """
        self._ending_streams = True
        for exchange in self._active:
            exchange.end_listening()
        code = self._websocket_close_code
        for session in self._websockets:
            task = asyncio.ensure_future(session.shutdown(code))
            self._closing_sessions.add(task)
            task.add_done_callback(self._closing_sessions.discard)

    def close_listener(self) -> None:
        """Stop accepting connections; idle keep-alive connections close at once.

        Busy connections answer their current request with ``connection: close``: the
        client must not send its next request on a connection to a pod that is leaving.
        """
        self._closing = True
        for exchange in self._active:
            exchange.close_connection()
        if self._server is not None:
            self._server.close()
        if self._connections is not None:
            self._connections.close_idle()
        if self._ws_server is not None:
            self._ws_server.pre_shutdown()

    async def wait_idle(
        self,
        deadline: float,
        *,
        cut_short: asyncio.Event | None = None,
        requests_only: bool = False,
    ) -> bool:
        """Wait until nothing is served, until ``deadline`` or until ``cut_short`` is set.

        ``requests_only`` waits for HTTP requests, not WebSockets. Returns whether what
        was waited for has ended.
        """
        idle = (
            [self._requests_idle] if requests_only else [self._requests_idle, self._websockets_idle]
        )
        for event in idle:
            if not event.is_set():
                waiters = [event.wait()]
                if cut_short is not None:
                    waiters.append(cut_short.wait())
                if await first_of(*waiters, deadline=deadline) is None or not event.is_set():
                    return False
        return True

    async def cut(self) -> int:
        """End what still runs after the graceful deadline; return how many requests.

        Requests are cut (``HttpExchange.cut``), then cancelled; the app calls on
        WebSockets are cancelled (``close`` closes their connections); the app calls get
        ``CUT_GRACE`` in all to end, so nothing of the app still runs when its lifespan
        shutdown begins.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        remaining = list(self._active)
        if remaining:
            self.aborted += len(remaining)
            logger.warning(
                "cutting %d request(s) still running at the graceful deadline "
                "(shutdown.graceful_timeout)",
                len(remaining),
            )
            for exchange in remaining:
                if exchange.cut():
                    self.aborted_unanswered += 1
            await self.wait_idle(began + CUT_GRACE / 2)
            for exchange in list(self._active):
                exchange.cancel()
        for task in (*self._closing_sessions, *self._websocket_calls):
            task.cancel()
        if not await self.wait_idle(began + CUT_GRACE):
            logger.warning(
                "%d request(s) and %d WebSocket(s) did not end when cancelled",
                len(self._active),
                len(self._websockets),
            )
        return len(remaining)

    async def close(self) -> None:
        """Close every connection (what was written is still flushed)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._config.uds and self.url.startswith("unix:"):
            remove_socket_file(self._config.uds)
        if self._connections is not None:
            self._connections.close_all()
        if self._ws_server is not None:
            await self._ws_server.shutdown(timeout=0.1)
