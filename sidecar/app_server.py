"""Serve an ASGI app's HTTP traffic on aiohttp's low-level server.

aiohttp parses HTTP/1.1 (its C parser), manages keep-alive and pipelining, and writes
responses; this module turns each parsed request into an ASGI ``http`` scope and the
app's messages back into a response. It uses ``web.Server`` directly, not the routing
``web.Application``: no router, no middleware chain, one small object per request.

Each request is one ``_Exchange``: its bound ``receive``/``send`` are what the app gets.
Responses are written as soon as the app sends them (not when the app returns), so
work an app does after its response (Starlette background tasks) does not delay the
client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, cast
from urllib.parse import unquote

from aiohttp import web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from .config import ServerConfig
from .errors import BindError, UnexpectedMessageError
from .metrics import Metrics
from .types import ASGIApp, Message

logger = logging.getLogger("sidecar.app")
access_logger = logging.getLogger("sidecar.access")

# HTTP spec 2.4: send() after the client has gone raises an OSError subclass, which is
# what lets Starlette stream without a second task listening for http.disconnect.
_ASGI = {"version": "3.0", "spec_version": "2.4"}
# Seconds a request cut at the graceful timeout gets to end on its own after it was
# told that the client is gone, before its task is cancelled.
_DISCONNECT_GRACE = 1.0
_HTTP_VERSIONS = {(1, 1): "1.1", (1, 0): "1.0", (0, 9): "0.9"}


class ClientDisconnected(OSError):
    """Raised by ``send()`` when the client has closed the connection."""


class _Request(BaseRequest):
    """A request that tells its exchange when the client goes away.

    aiohttp calls ``_cancel`` when the connection is lost (and when the server shuts a
    request down); the ASGI app must then receive ``http.disconnect``.
    """

    exchange: _Exchange | None = None

    def _cancel(self, exc: BaseException) -> None:
        super()._cancel(exc)
        if self.exchange is not None:
            self.exchange.disconnect()


class _Exchange:
    """One request/response between aiohttp and the app."""

    __slots__ = (
        "_body_done",
        "_disconnect_waiter",
        "_headers",
        "_request",
        "_response",
        "complete",
        "disconnected",
        "status",
        "task",
    )

    def __init__(self, request: _Request) -> None:
        self._request = request
        self._headers: CIMultiDict[str] | None = None
        self._response: web.StreamResponse | None = None
        self._body_done = False
        self._disconnect_waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.complete = False
        self.disconnected = False
        self.task: asyncio.Task[Any] | None = None

    # -- disconnect ---------------------------------------------------------------------

    def disconnect(self) -> None:
        """Mark the client gone and wake a ``receive()`` waiting for it."""
        self.disconnected = True
        waiter = self._disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- receive ------------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self._body_done:
            request = self._request
            if not request.body_exists:
                self._body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            content = request.content
            try:
                chunk = await content.readany()
            except Exception:  # the connection was lost while reading the body
                self.disconnect()
                return {"type": "http.disconnect"}
            more = not content.at_eof()
            self._body_done = not more
            return {"type": "http.request", "body": chunk, "more_body": more}
        # The body is consumed: the next event is the end of the exchange, either the
        # client leaving or (immediately, once the response is complete) its end.
        if not self.disconnected and not self.complete:
            waiter = asyncio.get_running_loop().create_future()
            self._disconnect_waiter = waiter
            try:
                await waiter
            finally:
                self._disconnect_waiter = None
        return {"type": "http.disconnect"}

    # -- send ---------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self._headers is None or self.complete:
                expected = "http.response.start" if self._headers is None else "nothing more"
                raise UnexpectedMessageError(message, (expected,))
            if self.disconnected:
                raise ClientDisconnected("the client closed the connection")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            response = self._response
            try:
                if response is None:
                    if not more:
                        # The whole response in one message (the common case): aiohttp
                        # writes status line, headers and body in a single send.
                        response = web.Response(
                            status=self.status, headers=self._headers, body=body
                        )
                        self._response = response
                        self.complete = True
                        await response.prepare(self._request)
                        await response.write_eof()
                        return
                    response = web.StreamResponse(status=self.status, headers=self._headers)
                    self._response = response
                    await response.prepare(self._request)
                if body:
                    await response.write(body)
                if not more:
                    self.complete = True
                    await response.write_eof()
            except ConnectionError as exc:
                self.disconnect()
                raise ClientDisconnected("the client closed the connection") from exc
            return
        if kind == "http.response.start":
            if self._headers is not None:
                raise UnexpectedMessageError(message, ("http.response.body",))
            headers: CIMultiDict[str] = CIMultiDict()
            for name, value in message.get("headers", ()):
                headers.add(name.decode("latin-1"), value.decode("latin-1"))
            self.status = message["status"]
            self._headers = headers
            return
        raise UnexpectedMessageError(message, ("http.response.start", "http.response.body"))

    @property
    def started(self) -> bool:
        """Tell whether response bytes may have reached the client."""
        return self._response is not None and self._response.prepared

    def response(self) -> web.StreamResponse | None:
        return self._response


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
    ) -> None:
        self._config = config
        self._app = app
        self._state = state
        self._metrics = metrics
        self._access_log = access_log
        self._root_path = config.root_path
        self._server: asyncio.AbstractServer | None = None
        self._web_server: web.Server | None = None
        self._active: set[_Exchange] = set()
        self._idle = asyncio.Event()
        self._idle.set()
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
    ) -> _Request:
        return _Request(message, payload, protocol, writer, task, asyncio.get_running_loop())

    def _scope(self, request: _Request) -> dict[str, Any]:
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
            "asgi": _ASGI,
            "http_version": _HTTP_VERSIONS.get((message.version[0], message.version[1]), "1.1"),
            "method": message.method,
            "scheme": "http",
            "path": root + path,
            "raw_path": (root + raw).encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": root,
            "headers": [(name.lower(), value) for name, value in message.raw_headers],
            "client": (peer[0], peer[1]) if isinstance(peer, tuple) else None,
            "server": (local[0], local[1]) if isinstance(local, tuple) else None,
            "state": self._state.copy(),
        }

    async def _handle(self, base_request: BaseRequest) -> web.StreamResponse:
        request = cast(_Request, base_request)  # built by _make_request
        started_at = time.perf_counter()
        exchange = _Exchange(request)
        request.exchange = exchange
        exchange.task = asyncio.current_task()
        self._active.add(exchange)
        self._idle.clear()
        metrics = self._metrics
        if metrics is not None:
            metrics.in_flight.inc()
        scope = self._scope(request)
        response: web.StreamResponse | None
        try:
            await self._app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if exchange.disconnected and isinstance(exc, ClientDisconnected):
                logger.debug("client left during %s %s", request.method, scope["path"])
            else:
                logger.exception(
                    "exception in ASGI app while handling %s %s", request.method, scope["path"]
                )
            response = self._fail(exchange, request)
        else:
            response = exchange.response()
            if not exchange.complete:
                if exchange.disconnected:
                    pass  # the client left; nothing to answer
                elif not exchange.started:
                    logger.error(
                        "ASGI app returned without sending a response to %s %s",
                        request.method,
                        scope["path"],
                    )
                else:
                    logger.error(
                        "ASGI app returned before finishing the response to %s %s",
                        request.method,
                        scope["path"],
                    )
                response = self._fail(exchange, request)
        finally:
            self._active.discard(exchange)
            if not self._active:
                self._idle.set()
            request.exchange = None
            exchange.task = None
            elapsed = time.perf_counter() - started_at
            status = (
                exchange.status if exchange.started else (499 if exchange.disconnected else 500)
            )
            if metrics is not None:
                metrics.in_flight.dec()
                metrics.observe_request(request.method, status, elapsed)
            if self._access_log:
                access_logger.info(
                    '%s - "%s %s HTTP/%s" %d %.1fms',
                    scope["client"][0] if scope["client"] else "-",
                    request.method,
                    request.path_qs,
                    scope["http_version"],
                    status,
                    elapsed * 1000,
                )
        return response if response is not None else self._fail(exchange, request)

    def _fail(self, exchange: _Exchange, request: _Request) -> web.StreamResponse:
        """Answer 500 when nothing was sent yet; otherwise cut the connection.

        A response that already started cannot be turned into an error, and ending it
        normally would make a truncated body look complete to the client.
        """
        if exchange.started or exchange.disconnected:
            transport = request.transport
            if transport is not None:
                transport.abort()
            request.protocol.force_close()
            response = exchange.response()
            return response if response is not None else web.Response(status=500)
        exchange.status = 500
        exchange.complete = True
        return web.Response(status=500, text="Internal Server Error")

    async def stop(
        self, graceful_timeout: float, *, cut_short: asyncio.Event | None = None
    ) -> None:
        """Stop accepting, let in-flight requests finish, then cut what is left.

        Order: (1) close the listening socket so no new connection is accepted;
        (2) close idle keep-alive connections at once and mark busy ones to close after
        their current response; (3) wait up to ``graceful_timeout`` (or until
        ``cut_short`` is set) for in-flight requests; (4) tell the remaining requests
        the client is gone (the app receives ``http.disconnect``) and cancel them.
        """
        if self._server is not None:
            self._server.close()
        web_server = self._web_server
        if web_server is None:
            return
        web_server.pre_shutdown()
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
                    async with asyncio.timeout(_DISCONNECT_GRACE):
                        await self._idle.wait()
                except TimeoutError:
                    for exchange in list(self._active):
                        if exchange.task is not None:
                            exchange.task.cancel()
        await web_server.shutdown(timeout=0.1)
        if self._server is not None:
            await self._server.wait_closed()
