"""Serve an ASGI app's HTTP traffic on aiohttp's low-level server.

aiohttp parses HTTP/1.1 (its C parser), manages connections, keep-alive, pipelining
and flow control; this module turns each parsed request into an ASGI ``http`` scope
and writes the app's response itself. It uses ``web.Server`` directly, not the routing
``web.Application``: no router, no middleware chain.

Responses do not go through aiohttp's response objects. The app's header bytes are
written as they came (checked for CR/LF, never decoded and re-encoded), a complete
response leaves in one ``transport.write``, and aiohttp is handed a finished marker
that tells it whether to keep the connection. Responses are written as soon as the app
sends them, so work an app does after its response (Starlette background tasks) does
not delay the client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

from aiohttp import web
from aiohttp.web_request import BaseRequest

from .config import ServerConfig
from .errors import BindError, UnexpectedMessageError
from .metrics import Metrics
from .types import ASGIApp, Message

logger = logging.getLogger("sidecar.app")
access_logger = logging.getLogger("sidecar.access")

# HTTP spec 2.4: send() after the client has gone raises an OSError subclass, which is
# what lets Starlette stream without a second task listening for http.disconnect.
_ASGI = {"version": "3.0", "spec_version": "2.4"}
_HTTP_VERSIONS = {(1, 1): "1.1", (1, 0): "1.0"}

# Seconds a request cut at the graceful timeout gets to end on its own after it was
# told that the client is gone, before its task is cancelled.
_DISCONNECT_GRACE = 1.0

_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_INTERNAL_ERROR_BODY = b"Internal Server Error"
_INTERNAL_ERROR_HEADERS = [(b"content-type", b"text/plain; charset=utf-8")]


class ClientDisconnected(OSError):
    """Raised by ``send()`` when the client has closed the connection."""


class _Finished:
    """What the handler returns to aiohttp once the response has been written.

    aiohttp only calls ``prepare`` and ``write_eof`` on it and reads ``keep_alive`` to
    decide whether to read another request from the connection.
    """

    __slots__ = ("keep_alive",)

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive

    async def prepare(self, request: BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


_KEEP = cast(web.StreamResponse, _Finished(True))
_CLOSE = cast(web.StreamResponse, _Finished(False))


class _DateLine:
    """The ``date`` header line, formatted at most once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
        return self._line


_date = _DateLine()


class _Request(BaseRequest):
    """A request that tells its exchange when the client goes away.

    aiohttp calls ``_cancel`` when the connection is lost; the ASGI app must then
    receive ``http.disconnect`` and ``send()`` must fail.
    """

    exchange: _Exchange | None = None

    def _cancel(self, exc: BaseException) -> None:
        super()._cancel(exc)
        if self.exchange is not None:
            self.exchange.disconnect()


class InvalidResponseError(ValueError):
    """The app's response cannot be sent as it is (bad header bytes or length)."""


class _Exchange:
    """One request/response between aiohttp and the app."""

    __slots__ = (
        "_body_done",
        "_chunked",
        "_declared",
        "_disconnect_waiter",
        "_headers",
        "_no_body",
        "_request",
        "_sent",
        "_version",
        "complete",
        "disconnected",
        "keep_alive",
        "started",
        "status",
    )

    def __init__(self, request: _Request, version: str, keep_alive: bool) -> None:
        self._request = request
        self._version = version
        self._body_done = False
        self._disconnect_waiter: asyncio.Future[None] | None = None
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._chunked = False
        self._no_body = False
        self._declared: int | None = None
        self._sent = 0
        self.status = 0
        #: Whether the connection may serve another request after this one.
        self.keep_alive = keep_alive
        #: The status line has been written: an error can no longer become a 500.
        self.started = False
        self.complete = False
        self.disconnected = False

    # -- disconnect ---------------------------------------------------------------------

    def disconnect(self) -> None:
        """Mark the client gone and wake a ``receive()`` waiting for it."""
        self.disconnected = True
        waiter = self._disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cancel(self) -> None:
        """Cancel the app call serving this exchange (the graceful timeout ran out)."""
        task = self._request.task
        if task is not None and not task.done():
            task.cancel()

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
            if not self.started:
                head = self._head(None if more else len(body))
                self.started = True
                self._write(head, body, more)
            else:
                self._write(b"", body, more)
            if more:
                writer = self._request.writer
                await writer.drain()  # returns at once unless the client reads slowly
            return
        if kind == "http.response.start":
            if self._headers is not None:
                raise UnexpectedMessageError(message, ("http.response.body",))
            self.status = message["status"]
            self._headers = list(message.get("headers", ()))
            return
        raise UnexpectedMessageError(message, ("http.response.start", "http.response.body"))

    def _head(self, length: int | None) -> bytes:
        """Serialize the status line and headers; ``length`` is known for one-message bodies.

        Decides the framing: the app's Content-Length, else our own for a complete
        body, else chunked (HTTP/1.1) or close-delimited (HTTP/1.0).
        """
        status = self.status
        headers = self._headers or []
        version = self._version
        request = self._request
        self._no_body = request.method == "HEAD" or status < 200 or status in (204, 304)
        reason = _REASONS.get(status, b"")
        lines = [b"HTTP/%s %d %s\r\n" % (version.encode("ascii"), status, reason)]
        has_date = has_connection = False
        for name, value in headers:
            if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                raise InvalidResponseError(
                    f"response header {name!r} contains a line break; refusing to send it"
                )
            lowered = name.lower()
            if lowered == b"content-length":
                try:
                    self._declared = int(value)
                except ValueError:
                    raise InvalidResponseError(
                        f"response content-length {value!r} is not a number"
                    ) from None
            elif lowered == b"transfer-encoding":
                self._chunked = value.lower() == b"chunked"
            elif lowered == b"connection":
                has_connection = True
                if b"close" in value.lower():
                    self.keep_alive = False
            elif lowered == b"date":
                has_date = True
            lines.append(b"%s: %s\r\n" % (name, value))
        if request.method == "HEAD" and self._declared is None and length:
            # The app built the body it would send to a GET; its length is the truth.
            lines.append(b"content-length: %d\r\n" % length)
        elif not self._no_body and self._declared is None and not self._chunked:
            if length is not None:
                lines.append(b"content-length: %d\r\n" % length)
                self._declared = length
            elif version == "1.1":
                lines.append(b"transfer-encoding: chunked\r\n")
                self._chunked = True
            else:  # HTTP/1.0 without a length: the end of the body is the end of the connection
                self.keep_alive = False
        mismatch = self._declared is not None and length is not None and length != self._declared
        if mismatch and not self._no_body:
            logger.error(
                "%s %s: the app declared content-length %s but sent %d bytes; "
                "closing the connection",
                request.method,
                request.path,
                self._declared,
                length,
            )
            self.keep_alive = False
        if not has_date:
            lines.append(_date.get())
        if not has_connection:
            if not self.keep_alive and version == "1.1":
                lines.append(b"connection: close\r\n")
            elif self.keep_alive and version == "1.0":
                lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _write(self, head: bytes, body: bytes, more: bool) -> None:
        transport = self._request.transport
        if transport is None or transport.is_closing():
            self.disconnect()
            raise ClientDisconnected("the client closed the connection")
        if self._no_body:
            data = head
        elif self._chunked:
            data = head + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"")
            if not more:
                data += b"0\r\n\r\n"
        else:
            declared = self._declared
            if declared is not None and self._sent + len(body) > declared:
                body = body[: declared - self._sent]  # never send more than declared
                self.keep_alive = False
            self._sent += len(body)
            data = head + body
        if not more:
            self.complete = True
            if (
                not self._no_body
                and not self._chunked
                and self._declared is not None
                and self._sent < self._declared
            ):
                self.keep_alive = False  # the client sees a short body, then the close
        if data:
            transport.write(data)


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
        self._stats = metrics.requests if metrics is not None else None
        self._access_log = access_log
        self._root_path = config.root_path
        self._server: asyncio.AbstractServer | None = None
        self._web_server: web.Server | None = None
        self._active: set[_Exchange] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
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

    def _scope(self, request: _Request, version: str) -> dict[str, Any]:
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
        request = cast(_Request, base_request)  # built by _make_request
        started_at = time.perf_counter()
        message = request._message
        version = _HTTP_VERSIONS.get((message.version[0], message.version[1]), "1.1")
        keep_alive = not message.should_close and not self._closing
        exchange = _Exchange(request, version, keep_alive)
        request.exchange = exchange
        self._active.add(exchange)
        self._idle.clear()
        stats = self._stats
        if stats is not None:
            stats.in_flight += 1
        scope = self._scope(request, version)
        try:
            await self._app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if exchange.disconnected and isinstance(exc, ClientDisconnected):
                logger.debug("client left during %s %s", request.method, scope["path"])
            else:
                logger.exception(
                    "exception in ASGI app while handling %s %s", request.method, scope["path"]
                )
            self._fail(exchange, request)
        else:
            if not exchange.complete and not exchange.disconnected:
                logger.error(
                    "ASGI app returned %s the response to %s %s",
                    "before finishing" if exchange.started else "without sending",
                    request.method,
                    scope["path"],
                )
                self._fail(exchange, request)
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
        return _KEEP if exchange.keep_alive and exchange.complete else _CLOSE

    def _fail(self, exchange: _Exchange, request: _Request) -> None:
        """Answer 500 when nothing was sent yet; otherwise cut the connection.

        A response that already started cannot be turned into an error, and ending it
        normally would make a truncated body look complete to the client.
        """
        if exchange.started or exchange.disconnected:
            exchange.keep_alive = False
            transport = request.transport
            if transport is not None:
                transport.abort()
            return
        exchange.status = 500
        exchange.complete = False
        exchange._headers = list(_INTERNAL_ERROR_HEADERS)
        exchange._declared = None
        exchange._chunked = False
        exchange.started = True
        head = exchange._head(len(_INTERNAL_ERROR_BODY))
        try:
            exchange._write(head, _INTERNAL_ERROR_BODY, False)
        except ClientDisconnected:
            exchange.keep_alive = False

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
                    # The connection's task awaits the request's task, so cancelling
                    # it cancels the app call too.
                    for exchange in list(self._active):
                        exchange.cancel()
        await web_server.shutdown(timeout=0.1)
        if self._server is not None:
            await self._server.wait_closed()
