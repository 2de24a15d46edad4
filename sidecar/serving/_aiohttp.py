"""The one module that uses aiohttp's private API.

The app port is served on aiohttp's HTTP/1.1 parser without its request and response
objects, which needs a few internals: the protocol base class that owns the parser and
write flow control, the parser's bounded message queue, and the request factory and
handler contract of the low-level ``web.Server`` (WebSocket connections). Every such
use is here, written against aiohttp 3.14.1 to 3.14.5, and checked when this module is
imported: an aiohttp without one of them fails at once, naming the installed version
and the supported range, rather than misbehaving on a live connection.

Everything else in ``sidecar.serving`` imports aiohttp's public names only
(``aiohttp.web``, ``aiohttp.WSMsgType``...) or the names below; a test keeps it so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import aiohttp
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_request import BaseRequest

#: The aiohttp releases this module was written against and CI runs (pyproject agrees).
SUPPORTED = ">=3.14.1,<4"

__all__ = [
    "EMPTY_PAYLOAD",
    "SUPPORTED",
    "AsgiRequest",
    "HttpProcessingError",
    "ParsingProtocol",
    "RawRequestMessage",
    "RequestPayloadError",
    "StreamReader",
    "drain",
    "finished",
    "new_request_parser",
    "websocket_server",
]

# Bytes per socket read the parser hands to a request body before flow control pauses.
READ_BUFSIZE = 2**16


class AiohttpVersionError(ImportError):
    """The installed aiohttp lacks what the app port is built on."""


def _check() -> None:
    """Fail at import when an internal this module relies on is missing."""
    missing = [
        f"{owner.__name__}.{name}"
        for owner, names in (
            (BaseProtocol, ("_loop", "_parser", "_reading_paused", "_drain_helper")),
            (HttpRequestParser, ("feed_data", "message_consumed", "pause_reading")),
            (BaseRequest, ("_cancel", "_prepare_hook")),
        )
        for name in names
        if not hasattr(owner, name)
    ]
    try:
        # The bounded queue of parsed-but-unserved requests (pipelining) is a keyword of
        # the C parser, which has no signature to inspect: construct one.
        HttpRequestParser(None, None, READ_BUFSIZE, max_msg_queue_size=1)
    except TypeError:
        missing.append("HttpRequestParser(max_msg_queue_size=...)")
    if missing:
        raise AiohttpVersionError(
            f"lifespan-sidecar needs aiohttp {SUPPORTED}, but aiohttp {aiohttp.__version__} "
            f"is installed and lacks {', '.join(missing)}; "
            f"install a supported release: pip install 'aiohttp{SUPPORTED}'"
        )


_check()


def new_request_parser(
    protocol: ParsingProtocol,
    loop: asyncio.AbstractEventLoop,
    *,
    max_line_size: int,
    max_field_size: int,
    max_headers: int,
    max_pending: int,
) -> HttpRequestParser:
    """aiohttp's request parser (the C one when built) with the app port's limits."""
    return HttpRequestParser(
        protocol,
        loop,
        READ_BUFSIZE,
        max_line_size=max_line_size,
        max_field_size=max_field_size,
        max_headers=max_headers,
        payload_exception=RequestPayloadError,
        # The app gets the body as the client sent it (content-encoding included), as
        # with any ASGI server; decompressing here would also invite zip bombs.
        auto_decompress=False,
        # Requests parsed ahead of the one being served (pipelining): at the limit the
        # parser stops emitting messages and keeps the rest of the bytes.
        max_msg_queue_size=max_pending,
    )


ParsedRequests = Sequence[tuple[RawRequestMessage, StreamReader]]


class ParsingProtocol(BaseProtocol):
    """aiohttp's protocol base with what a request-parsing connection needs from it.

    aiohttp's base keeps the parser, body flow control (a ``StreamReader`` calls
    ``pause_reading``/``resume_reading`` on its protocol) and write flow control
    (``drain``). On top of that the connection may *hold* reading while its queue of
    parsed requests is full; the socket is read again only once neither the body nor
    the queue holds it. Both holds are kept here, so their rules do not depend on how a
    given aiohttp release tracks its own.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, parser: HttpRequestParser) -> None:
        super().__init__(loop, parser)
        self._held = False
        #: The event loop (a plain attribute: read on every request).
        self.event_loop = loop
        #: Parse bytes: the complete requests, whether the last one upgrades, and the
        #: bytes after it; raises ``HttpProcessingError`` for a malformed request. The
        #: parser's own method (called on every read; not after ``detach_parser``).
        self.parse: Callable[[bytes], tuple[ParsedRequests, bool, bytes]] = cast(
            Any, parser.feed_data
        )

    @property
    def parsing(self) -> bool:
        """Whether requests are still parsed here (not after an error or a hand-off)."""
        return self._parser is not None

    def message_consumed(self) -> bool:
        """Tell the parser one queued request was taken (it may emit the next ones).

        Returns whether reading is held for the queue (and still parsed here): then the
        connection may release it. One call on every request, so it does both.
        """
        parser = self._parser
        if parser is None:
            return False
        parser.message_consumed()
        return self._held

    def detach_parser(self) -> None:
        """Parse nothing more on this connection."""
        self._parser = None

    # -- read flow control ------------------------------------------------------------

    @property
    def reading_held(self) -> bool:
        """Reading is held for the queue of parsed requests."""
        return self._held

    @property
    def reading_stopped(self) -> bool:
        """The socket is not read, for the body's flow control or for the queue."""
        return self._held or self._reading_paused

    def pause_reading(self) -> None:
        # A request body's buffer is full: stop the parser and the socket.
        self._reading_paused = True
        parser = self._parser
        if parser is not None:
            parser.pause_reading()
        self._pause_transport()

    def resume_reading(self, resume_parser: bool = True) -> None:
        # A request body calls this on every read once its buffer is below the low-water
        # mark, paused or not; resuming (and re-running the parser) is only needed after
        # a pause.
        if not self._reading_paused:
            return
        self._reading_paused = False
        if resume_parser and self._parser is not None:
            self.data_received(b"")  # parse what the pause held back
        if not self._reading_paused and not self._held:
            self._resume_transport()

    def hold_reading(self) -> None:
        """Stop reading the socket until ``release_reading`` (the queue is full)."""
        self._held = True
        self._pause_transport()

    def release_reading(self) -> None:
        """Let the socket be read again, unless a request body still holds it."""
        self._held = False
        if not self._reading_paused:
            self._resume_transport()

    def resume_transport(self) -> None:
        """Read the socket again whatever held it (its next owner reads from here on)."""
        self._held = self._reading_paused = False
        self._resume_transport()

    def _pause_transport(self) -> None:
        transport = self.transport
        if transport is not None:
            # A transport without flow control (or closing): nothing to pause.
            with contextlib.suppress(AttributeError, NotImplementedError, RuntimeError):
                transport.pause_reading()

    def _resume_transport(self) -> None:
        transport = self.transport
        if transport is not None:
            with contextlib.suppress(AttributeError, NotImplementedError, RuntimeError):
                transport.resume_reading()

    def keep_alive_probes(self) -> None:
        """Turn on TCP keepalive, so a peer that vanished is noticed by the kernel."""
        if self.transport is not None:
            tcp_keepalive(self.transport)

    async def drain(self) -> None:
        """Return once the transport's write buffer is below its high-water mark."""
        await self._drain_helper()


async def drain(protocol: Any) -> None:
    """Write flow control of any aiohttp protocol (ours or ``web.Server``'s handler)."""
    await cast(BaseProtocol, protocol)._drain_helper()


class AsgiRequest(BaseRequest):
    """The request ``web.Server`` builds for a WebSocket upgrade.

    It keeps the parsed message and body for the ASGI scope, and tells its exchange when
    the client goes away: aiohttp calls ``_cancel`` when the connection is lost, and the
    app must then receive ``websocket.disconnect`` and ``send()`` must fail.
    """

    exchange: Any = None  # an object with disconnect(): the handshake's HttpExchange

    def __init__(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: Any,
        writer: Any,
        task: Any,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(message, payload, protocol, writer, task, loop)
        self.raw_message = message
        self.body = payload

    def _cancel(self, exc: BaseException) -> None:
        super()._cancel(exc)
        if self.exchange is not None:
            self.exchange.disconnect()

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # Called once aiohttp has set the response's headers, before they are written:
        # the handshake names no server software (aiohttp adds Python's and its own).
        response.headers.popall("Server", None)
        await super()._prepare_hook(response)


class _Finished:
    """What a ``web.Server`` handler returns once it wrote the response itself.

    aiohttp's request handler only calls ``prepare`` and ``write_eof`` on it and reads
    ``keep_alive`` to decide whether to read another request from the connection.
    """

    __slots__ = ("keep_alive",)

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive

    async def prepare(self, request: BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


_CLOSE = cast(web.StreamResponse, _Finished(False))


def finished() -> web.StreamResponse:
    """The handler's answer when the response is already written; the connection closes."""
    return _CLOSE


def websocket_server(
    handler: Callable[[AsgiRequest], Awaitable[web.StreamResponse]],
    *,
    keepalive_timeout: float,
    max_line_size: int,
    max_field_size: int,
    max_headers: int,
) -> web.Server:
    """aiohttp's low-level server for the connections handed over for a WebSocket."""

    def make_request(
        message: RawRequestMessage, payload: StreamReader, protocol: Any, writer: Any, task: Any
    ) -> AsgiRequest:
        return AsgiRequest(message, payload, protocol, writer, task, asyncio.get_running_loop())

    return web.Server(
        handler,  # type: ignore[arg-type]  # the factory makes every request an AsgiRequest
        request_factory=make_request,
        keepalive_timeout=keepalive_timeout,
        access_log=None,
        max_line_size=max_line_size,
        max_field_size=max_field_size,
        max_headers=max_headers,
        auto_decompress=False,
    )
