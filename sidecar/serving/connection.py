"""Client connections on the app port: aiohttp's HTTP/1.1 parser in, ASGI exchanges out.

Each connection is an ``asyncio.Protocol`` that feeds what it reads to aiohttp's request
parser (its C parser when available, with aiohttp's limits on the request line, header
size and count, its checks for request smuggling and its body flow control) and serves
the parsed requests one at a time, in order, through ``HttpExchange``. Nothing else
sits between the socket and the app: no request or response objects, no task per
connection, one task per request (the app call).

A WebSocket upgrade is handed, with the bytes read so far, to aiohttp's own server
protocol, which does the handshake and framing (``websocket.py``).

Lifetimes: a connection is idle between requests; it is closed after
``keep_alive_timeout`` seconds idle, ``header_timeout`` seconds after it opened if no
complete request head came, after a response that does not keep it alive, and when
the server stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..config import ServerConfig
from ._aiohttp import (
    EMPTY_PAYLOAD,
    HttpProcessingError,
    ParsedRequests,
    ParsingProtocol,
    RawRequestMessage,
    StreamReader,
    new_request_parser,
)
from .body import BodyLimits
from .exchange import HttpExchange
from .response import simple_response
from .scope import HTTP_VERSIONS

logger = logging.getLogger("sidecar.app")

# Requests parsed ahead of the one being served (pipelining). At the limit the parser
# stops and the socket is not read until the queue is half empty.
MAX_PENDING = 32
# A request body the app did not read is read and thrown away, so the connection can
# serve the next request; for at most this long and this many bytes, else it is closed.
DISCARD_TIME = 10.0
DISCARD_BYTES = 2**20


@dataclass(frozen=True)
class ConnectionSettings:
    """Per-connection limits and timers, from the ``server`` config section."""

    keep_alive_timeout: float
    header_timeout: float
    max_connections: int
    max_request_line: int
    max_header_size: int
    max_headers: int
    body_limits: BodyLimits

    @classmethod
    def from_config(cls, config: ServerConfig) -> ConnectionSettings:
        return cls(
            keep_alive_timeout=config.keep_alive_timeout,
            header_timeout=config.header_timeout,
            max_connections=config.max_connections,
            max_request_line=config.max_request_line,
            max_header_size=config.max_header_size,
            max_headers=config.max_headers,
            body_limits=BodyLimits(config.max_body_size, config.body_timeout),
        )


class Dispatcher(Protocol):
    """What connections need from the server that owns them."""

    def dispatch(self, exchange: HttpExchange, over_cap: bool) -> None:
        """Run the app on a new exchange (or refuse it); return at once."""

    def hand_off(self, transport: asyncio.Transport, data: bytes) -> None:
        """Give a connection whose next request is a WebSocket upgrade to aiohttp."""


class Connections:
    """The open connections of one listener; the protocol factory for ``create_server``."""

    def __init__(
        self,
        settings: ConnectionSettings,
        dispatcher: Dispatcher,
        others: Callable[[], int] = lambda: 0,
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        #: Connections open elsewhere that count towards ``max_connections`` (the
        #: WebSockets handed off to aiohttp).
        self.others = others
        self.open: set[HttpConnection] = set()
        #: Set when the server stops: idle connections close, busy ones after their response.
        self.closing = False
        #: Connections closed because no complete request head arrived in time.
        self.timed_out = 0

    def __call__(self) -> HttpConnection:
        return HttpConnection(self, asyncio.get_running_loop())

    def close_idle(self) -> None:
        """Stop: close the connections between requests; the others close after theirs."""
        self.closing = True
        for connection in list(self.open):
            if connection.idle:
                connection.force_close()

    def close_all(self) -> None:
        """Close every connection (what was written is still flushed)."""
        self.closing = True
        for connection in list(self.open):
            connection.force_close()


class HttpConnection(ParsingProtocol):
    """One client connection: parse requests, serve them one at a time, keep alive."""

    def __init__(self, manager: Connections, loop: asyncio.AbstractEventLoop) -> None:
        settings = manager.settings
        parser = new_request_parser(
            self,
            loop,
            max_line_size=settings.max_request_line,
            max_field_size=settings.max_header_size,
            max_headers=settings.max_headers,
            max_pending=MAX_PENDING,
        )
        super().__init__(loop, parser)
        self._manager = manager
        self._settings = settings
        self._pending: deque[tuple[RawRequestMessage, StreamReader]] = deque()
        #: The exchange being served; None between requests.
        self.exchange: HttpExchange | None = None
        self._busy = False  # serving, or discarding an unread request body
        self._dispatching = False
        self._error: HttpProcessingError | None = None
        self._ignore_rest = False
        self._upgrade: RawRequestMessage | None = None
        self._upgrade_tail = bytearray()
        self._over_cap = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._on_done = self._response_done  # bound once, not per request
        #: The peer and local addresses as ASGI ``client``/``server`` tuples.
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.keep_alive_probes()
        manager = self._manager
        manager.open.add(self)
        self.client = address(transport, "peername")
        self.server = address(transport, "sockname")
        settings = self._settings
        open_now = len(manager.open) + manager.others()
        if settings.max_connections and open_now > settings.max_connections:
            # The first request is answered 503 and the connection closed. Answering
            # after reading it (not at once) lets the client read the 503, not a reset.
            self._over_cap = True
        loop = self.event_loop
        if settings.header_timeout:
            self._head_timer = loop.call_later(settings.header_timeout, self._head_late)
        self._idle_since = loop.time()
        if settings.keep_alive_timeout:
            self._idle_timer = loop.call_later(settings.keep_alive_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self._error is not None or self._ignore_rest:
            return
        if self._upgrade is not None:  # bytes of the upgraded protocol: for aiohttp
            self._upgrade_tail += data
            return
        messages: ParsedRequests
        try:
            messages, upgraded, tail = self.parse(data)
        except HttpProcessingError as exc:
            self._error = exc
            self.hold_reading()  # nothing after a malformed request is read
            messages, upgraded, tail = (), False, b""
            # A body cut by the error must not leave its reader waiting for the rest.
            if self.exchange is not None:
                _fail_payload(self.exchange.payload, exc)
            for _, payload in self._pending:
                _fail_payload(payload, exc)
        if messages:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            pending = self._pending
            if upgraded:
                last = messages[-1][0]
                if last.method == "CONNECT":
                    # Answered as a request, then the connection ends: no tunnels.
                    self._ignore_rest = True
                else:
                    messages = messages[:-1]
                    self._upgrade = last
                    self._upgrade_tail += tail
            pending.extend(messages)
            if len(pending) >= MAX_PENDING and not self.reading_held:
                self.hold_reading()
        if not self._busy:
            self._serve_next()

    def eof_received(self) -> None:
        # The client half-closed: the transport closes (connection_lost follows).
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._manager.open.discard(self)
        self._cancel_timers()
        super().connection_lost(exc)  # wakes a writer waiting for the buffer to drain
        self.detach_parser()
        exchange = self.exchange
        if exchange is not None:
            exchange.disconnect()
            _fail_payload(exchange.payload)
        for _, payload in self._pending:
            _fail_payload(payload)
        self._pending.clear()

    # -- connection state ---------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Between requests, with none received and waiting."""
        return not self._busy and not self._pending and self._upgrade is None

    def force_close(self) -> None:
        """Close now; bytes already written are still flushed."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._idle_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport is None or self._busy:
            return
        self._manager.timed_out += 1
        logger.info(
            "closing a connection without a complete request head after %gs "
            "(server.header_timeout)",
            self._settings.header_timeout,
        )
        self.force_close()

    def _idle_check(self) -> None:
        # One timer per connection, pushed back rather than re-armed per request.
        self._idle_timer = None
        if self.transport is None:
            return
        loop = self.event_loop
        timeout = self._settings.keep_alive_timeout
        if not self.idle:
            due = loop.time() + timeout
        else:
            due = self._idle_since + timeout
            if due <= loop.time():
                self.force_close()
                return
        self._idle_timer = loop.call_at(due, self._idle_check)

    # -- serving ------------------------------------------------------------------------

    def _serve_next(self) -> None:
        """Start the next request received, or hand off, answer an error, or idle."""
        if self._dispatching:
            return  # a refusal answered synchronously; the loop below goes on
        self._dispatching = True
        try:
            while not self._busy and self.transport is not None:
                if self._pending:
                    message, payload = self._pending.popleft()
                    self._resume_parsing()
                    self._start(message, payload)
                elif self._error is not None:
                    self._answer_error(self._error)
                    return
                elif self._upgrade is not None:
                    self._hand_off(self._upgrade)
                    return
                else:
                    self._idle_since = self.event_loop.time()
                    if self._manager.closing:
                        self.force_close()
                    return
        finally:
            self._dispatching = False

    def _resume_parsing(self) -> None:
        held = self.message_consumed()
        if held and self._error is None and len(self._pending) <= MAX_PENDING // 2:
            # Parse what the parser held back, then read the socket again if it fits.
            self.data_received(b"")
            if len(self._pending) < MAX_PENDING:
                self.release_reading()

    def _start(self, message: RawRequestMessage, payload: StreamReader) -> None:
        version = HTTP_VERSIONS.get(message.version, "1.1")  # HttpVersion is a tuple
        keep_alive = not (message.should_close or self._over_cap or message.method == "CONNECT")
        # Positional: keywords to a class call build a dict on every request.
        exchange = HttpExchange(
            self,
            message,
            payload,
            version,
            keep_alive,
            self._settings.body_limits,
            self.client,
            self.server,
            self._on_done,
        )
        self.exchange = exchange
        self._busy = True
        self._manager.dispatcher.dispatch(exchange, self._over_cap)

    def _response_done(self, exchange: HttpExchange) -> None:
        """The exchange's response is written: close, or move on to the next request."""
        if exchange is not self.exchange:
            return
        self.exchange = None
        if not exchange.keep_alive or self._manager.closing or self._error is not None:
            self._busy = False
            self.force_close()
            return
        payload = exchange.payload
        if not payload.is_eof():
            if exchange.awaiting_continue:
                # The client waits for 100 Continue before sending the body it
                # announced; it will never come, so the connection cannot be reused.
                self._busy = False
                self.force_close()
                return
            self.event_loop.create_task(self._discard_body(payload))
            return
        self._busy = False
        self._serve_next()

    async def _discard_body(self, payload: StreamReader) -> None:
        """Read and drop the rest of a body the app ignored, then serve the next request."""
        loop = self.event_loop
        deadline = loop.time() + DISCARD_TIME
        discarded = 0
        try:
            async with asyncio.timeout_at(deadline):
                while not payload.is_eof() and discarded <= DISCARD_BYTES:
                    discarded += len(await payload.readany())
        except (TimeoutError, OSError, HttpProcessingError):
            pass
        self._busy = False
        if payload.is_eof() and self.transport is not None:
            self._serve_next()
        else:
            self.force_close()

    def _answer_error(self, error: HttpProcessingError) -> None:
        """Answer a request the parser refused, then close the connection."""
        status = error.code if 400 <= error.code < 600 else 400
        logger.info("refusing a malformed request (%d): %s", status, error.message)
        transport = self.transport
        if transport is not None:
            transport.write(simple_response(status))
        self.force_close()

    def _hand_off(self, message: RawRequestMessage) -> None:
        """Give the connection to aiohttp's server for the WebSocket it asks for."""
        transport = self.transport
        assert transport is not None
        self._manager.open.discard(self)
        self._cancel_timers()
        if self.reading_stopped:
            self.resume_transport()  # aiohttp reads from here on
        head = _serialize_head(message)
        tail = bytes(self._upgrade_tail)
        self._upgrade_tail.clear()
        self._upgrade = None
        self.transport = None
        self.detach_parser()
        self._busy = True  # nothing more on this protocol
        self._manager.dispatcher.hand_off(transport, head + tail)


def _fail_payload(payload: StreamReader, error: BaseException | None = None) -> None:
    """End a body still being received with ``error`` (default: the client left)."""
    if payload is not EMPTY_PAYLOAD and not payload.is_eof():
        payload.set_exception(error or ConnectionResetError("the client closed the connection"))


def address(transport: asyncio.BaseTransport, name: str) -> tuple[str, int] | None:
    """A transport's ``peername`` or ``sockname`` as an ASGI ``(host, port)``, if it has one."""
    value = transport.get_extra_info(name)
    return (value[0], value[1]) if isinstance(value, tuple) else None


def _serialize_head(message: RawRequestMessage) -> bytes:
    """The request head as the client sent it (line and raw header bytes)."""
    target = message.path.encode("utf-8", "surrogateescape")
    lines = [b"%s %s HTTP/%d.%d\r\n" % (message.method.encode("ascii"), target, *message.version)]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in message.raw_headers)
    lines.append(b"\r\n")
    return b"".join(lines)
