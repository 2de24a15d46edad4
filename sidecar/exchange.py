"""One HTTP request/response between a client connection and an ASGI app.

Responses do not go through aiohttp's response objects. The app's header bytes are
written as they came (checked for CR/LF, never decoded and re-encoded), a complete
response leaves in one ``transport.write``, and the connection is told when the
response is done, so it can serve its next request. Responses are written as soon as
the app sends them, so work an app does after its response (Starlette background
tasks) does not delay the client.

The connection is either the sidecar's own (``connection.HttpConnection``) or, for the
HTTP side of a WebSocket handshake, aiohttp's server protocol; both are aiohttp
``BaseProtocol``s, which give write flow control.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_request import BaseRequest

from .errors import UnexpectedMessageError
from .types import Message

logger = logging.getLogger("sidecar.app")

# HTTP spec 2.4: send() after the client has gone raises an OSError subclass, which is
# what lets Starlette stream without a second task listening for http.disconnect.
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
HTTP_VERSIONS = {(1, 1): "1.1", (1, 0): "1.0"}

# Seconds a request cut at the graceful timeout gets to end on its own after it was
# told that the client is gone, before its task is cancelled.
DISCONNECT_GRACE = 1.0

_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_STATUS_LINES = {
    (version, status): b"HTTP/%s %d %s\r\n" % (version.encode("ascii"), status, reason)
    for version in ("1.1", "1.0")
    for status, reason in _REASONS.items()
}
# Response headers that decide framing and keep-alive (lower-cased).
_FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"connection", b"date"))
# Bytes read from a file per write for http.response.pathsend.
_FILE_CHUNK = 256 * 1024
ERROR_HEADERS = [(b"content-type", b"text/plain; charset=utf-8")]


class ClientDisconnected(OSError):
    """Raised by ``send()`` when the client has closed the connection."""


class Finished:
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


KEEP_ALIVE = cast(web.StreamResponse, Finished(True))
CLOSE = cast(web.StreamResponse, Finished(False))


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


def simple_response(status: int) -> bytes:
    """A complete plain-text response (the status phrase) that closes the connection."""
    body = HTTPStatus(status).phrase.encode("ascii")
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, body)]
    lines.extend(b"%s: %s\r\n" % pair for pair in ERROR_HEADERS)
    lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(_date.get())
    lines.append(b"connection: close\r\n\r\n")
    return b"".join(lines) + body


class Connection(Protocol):
    """The connection an exchange writes to (an aiohttp ``BaseProtocol``)."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def force_close(self) -> None: ...

    async def _drain_helper(self) -> None: ...


class AsgiRequest(BaseRequest):
    """A request that tells its exchange when the client goes away.

    aiohttp calls ``_cancel`` when the connection is lost; the ASGI app must then
    receive ``http.disconnect`` and ``send()`` must fail.
    """

    exchange: HttpExchange | None = None

    def _cancel(self, exc: BaseException) -> None:
        super()._cancel(exc)
        if self.exchange is not None:
            self.exchange.disconnect()


@dataclass(frozen=True)
class BodyLimits:
    """Request body limits from ``server.max_body_size`` and ``server.body_timeout``."""

    max_size: int = 0  # bytes; 0: no limit
    read_timeout: float = 0.0  # seconds between pieces of body; 0: no limit


NO_LIMITS = BodyLimits()


class InvalidResponseError(ValueError):
    """The app's response cannot be sent as it is (bad header bytes or length)."""


class HttpExchange:
    """One request/response between a connection and the app."""

    __slots__ = (
        "_body_done",
        "_chunked",
        "_continued",
        "_declared",
        "_disconnect_waiter",
        "_ending",
        "_headers",
        "_limits",
        "_no_body",
        "_received",
        "_sent",
        "_version",
        "complete",
        "connection",
        "disconnected",
        "keep_alive",
        "message",
        "on_complete",
        "on_done",
        "payload",
        "recorded",
        "started",
        "started_at",
        "status",
        "task",
    )

    def __init__(
        self,
        connection: Connection,
        message: RawRequestMessage,
        payload: StreamReader,
        version: str,
        keep_alive: bool,
        limits: BodyLimits = NO_LIMITS,
    ) -> None:
        self.connection = connection
        self.message = message
        self.payload = payload
        self._limits = limits
        self._received = 0
        self._version = version
        self._body_done = False
        self._disconnect_waiter: asyncio.Future[None] | None = None
        self._ending = False
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._chunked = False
        self._continued = False
        self._no_body = False
        self._declared: int | None = None
        self._sent = 0
        self.status = 0
        #: Whether the connection may serve another request after this one.
        self.keep_alive = keep_alive
        #: Called once, just before the last bytes of the response are written, so that
        #: whatever it records is in place before the client can see the response.
        self.on_complete: Callable[[HttpExchange], None] | None = None
        self.recorded = False
        #: Called once, after the last bytes of the response were handed to the transport.
        self.on_done: Callable[[HttpExchange], None] | None = None
        self.started_at = time.perf_counter()
        #: The status line has been written: an error can no longer become a 500.
        self.started = False
        self.complete = False
        self.disconnected = False
        #: The task running the app call for this exchange.
        self.task: asyncio.Task[None] | None = None

    # -- disconnect ---------------------------------------------------------------------

    def disconnect(self) -> None:
        """Mark the client gone and wake a ``receive()`` waiting for it."""
        self.disconnected = True
        self._wake_receiver()

    def _wake_receiver(self) -> None:
        """Let a ``receive()`` waiting for the end of the exchange return."""
        waiter = self._disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cancel(self) -> None:
        """Cancel the app call serving this exchange (the graceful timeout ran out)."""
        task = self.task
        if task is not None and not task.done():
            task.cancel()

    # -- receive ------------------------------------------------------------------------

    async def receive(self) -> Message:
        if self.complete:
            # The spec's answer once the response is sent, body read or not; the rest of
            # the request body now belongs to the connection, which discards it.
            return {"type": "http.disconnect"}
        if not self._body_done:
            content = self.payload
            if content is EMPTY_PAYLOAD:
                self._body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            message = self.message
            if not self._continued:
                self._continued = True
                if "Expect" in message.headers:  # rare: check before calling anything
                    self._answer_expect_continue()
            limits = self._limits
            try:
                # Most bodies are already buffered when the app asks: take them without
                # waiting (and without arming the body timeout).
                chunk = content.read_nowait()  # raises what broke the body, if anything
                if not chunk and not content.at_eof():
                    if limits.read_timeout:
                        async with asyncio.timeout(limits.read_timeout):
                            chunk = await content.readany()
                    else:
                        chunk = await content.readany()
            except TimeoutError:
                logger.info(
                    "%s %s: no request body data for %gs (server.body_timeout); closing",
                    message.method,
                    message.path,
                    limits.read_timeout,
                )
                self._refuse_body(408)
                return {"type": "http.disconnect"}
            except (HttpProcessingError, RequestPayloadError) as exc:  # broken body framing
                logger.info("%s %s: invalid request body: %s", message.method, message.path, exc)
                self._refuse_body(400)
                return {"type": "http.disconnect"}
            except Exception:  # the connection was lost while reading the body
                self.disconnect()
                return {"type": "http.disconnect"}
            self._received += len(chunk)
            if limits.max_size and self._received > limits.max_size:
                logger.info(
                    "%s %s: request body passed server.max_body_size (%d bytes); closing",
                    message.method,
                    message.path,
                    limits.max_size,
                )
                self._refuse_body(413)
                return {"type": "http.disconnect"}
            more = not content.at_eof()
            self._body_done = not more
            return {"type": "http.request", "body": chunk, "more_body": more}
        # The body is consumed: the next event is the end of the exchange, either the
        # client leaving or (immediately, once the response is complete) its end.
        if not self.complete:
            await self.receive_disconnect()
        return {"type": "http.disconnect"}

    def _answer_expect_continue(self) -> None:
        """Send ``100 Continue`` to a client that waits for it, now that the app reads.

        Sent only when the app asks for the body, so an app that rejects the request
        from its headers never makes the client upload it.
        """
        if self._version != "1.1" or self.started:
            return
        transport = self.connection.transport
        if transport is not None and self._expects_continue():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _expects_continue(self) -> bool:
        expect = self.message.headers.get("Expect")
        return expect is not None and expect.lower() == "100-continue"

    @property
    def awaiting_continue(self) -> bool:
        """Whether the client still waits for ``100 Continue`` before sending its body."""
        return (
            not self._continued and self.payload is not EMPTY_PAYLOAD and (self._expects_continue())
        )

    def _refuse_body(self, status: int) -> None:
        """Stop reading a body that broke a limit: answer ``status`` if possible, then close.

        The app is told the client is gone (``http.disconnect``, and ``send()`` fails), so
        it stops waiting for the rest; the connection cannot be reused mid-body.
        """
        self._body_done = True
        if not self.started:
            self.fail(status)
        self.keep_alive = False
        self.disconnect()
        self.connection.force_close()

    async def receive_disconnect(self) -> None:
        """Wait until the client goes away or the server ends the exchange."""
        if self.disconnected or self._ending:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._disconnect_waiter = waiter
        try:
            await waiter
        finally:
            self._disconnect_waiter = None

    def end_listening(self) -> None:
        """Tell an app waiting in ``receive()`` that the exchange is over (server stopping).

        Unlike ``disconnect()`` this leaves ``send()`` working: a response being written
        may still finish within the graceful timeout.
        """
        self._ending = True
        self._wake_receiver()

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
                head = self.head(None if more else len(body))
                self.started = True
                self.write(head, body, more)
            else:
                self.write(b"", body, more)
            if more:
                # Returns at once unless the client reads slower than the app writes.
                await self.connection._drain_helper()
            return
        if kind == "http.response.start":
            if self._headers is not None:
                raise UnexpectedMessageError(message, ("http.response.body",))
            self.status = message["status"]
            self._headers = list(message.get("headers", ()))
            return
        if kind == "http.response.pathsend":
            if self._headers is None or self.started:
                expected = "http.response.start" if self._headers is None else "nothing more"
                raise UnexpectedMessageError(message, (expected,))
            await self._send_file(message["path"])
            return
        raise UnexpectedMessageError(
            message, ("http.response.start", "http.response.body", "http.response.pathsend")
        )

    async def _send_file(self, path: str) -> None:
        """Send a file as the whole body (``http.response.pathsend``).

        Opening and reading happen in the default executor: a file on a slow or network
        filesystem must not stall every other request on the loop.
        """
        if self.disconnected:
            raise ClientDisconnected("the client closed the connection")
        loop = asyncio.get_running_loop()
        try:
            handle = await loop.run_in_executor(None, open, path, "rb")
        except OSError as exc:
            raise InvalidResponseError(
                f"http.response.pathsend: cannot open {path!r}: {exc.strerror or exc}"
            ) from exc
        try:
            size = os.fstat(handle.fileno()).st_size
            head = self.head(size)
            self.started = True
            remaining = size
            while True:
                chunk = b""
                if remaining:
                    chunk = await loop.run_in_executor(
                        None, handle.read, min(_FILE_CHUNK, remaining)
                    )
                remaining -= len(chunk)
                more = bool(chunk) and remaining > 0
                self.write(head, chunk, more)
                head = b""
                if not more:
                    return
                await self.connection._drain_helper()
        finally:
            handle.close()

    @property
    def version(self) -> str:
        return self._version

    @property
    def ended_by_server(self) -> bool:
        """Tell whether the server ended this exchange (``end_listening``) while stopping."""
        return self._ending

    def fail(self, status: int = 500, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer ``status`` when nothing was sent yet; otherwise cut the connection.

        A response that already started cannot be turned into an error, and ending it
        normally would make a truncated body look complete to the client. A complete
        response (the app raised afterwards, in a background task) is left to be
        delivered: aborting would drop what the transport still buffers.
        """
        if self.complete:
            self.keep_alive = False
            return
        if self.started or self.disconnected:
            self.keep_alive = False
            transport = self.connection.transport
            if transport is not None:
                transport.abort()
            return
        body = HTTPStatus(status).phrase.encode("ascii")
        self.status = status
        self._headers = [*ERROR_HEADERS, *(extra or ())]
        self._declared = None
        self._chunked = False
        self.started = True
        try:
            self.write(self.head(len(body)), body, False)
        except ClientDisconnected:
            self.keep_alive = False

    def head(self, length: int | None) -> bytes:
        """Serialize the status line and headers; ``length`` is known for one-message bodies.

        Decides the framing: the app's Content-Length, else our own for a complete
        body, else chunked (HTTP/1.1) or close-delimited (HTTP/1.0).
        """
        status = self.status
        headers = self._headers or ()
        version = self._version
        message = self.message
        self._no_body = message.method == "HEAD" or status < 200 or status in (204, 304)
        status_line = _STATUS_LINES.get((version, status))
        if status_line is None:
            reason = _REASONS.get(status, b"")
            status_line = b"HTTP/%s %d %s\r\n" % (version.encode("ascii"), status, reason)
        lines = [status_line]
        has_date = has_connection = False
        for name, value in headers:
            lines.append(b"%s: %s\r\n" % (name, value))
            lowered = name.lower()
            if lowered not in _FRAMING_HEADERS:
                continue
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
            else:  # date
                has_date = True
        # One line per header, so exactly one CR and one LF each: any other count means
        # a name or value carries a line break (response splitting). Checked on the
        # whole block at once; the culprit is looked for only when there is one.
        block = b"".join(lines[1:])
        if block.count(b"\n") != len(headers) or block.count(b"\r") != len(headers):
            for name, value in headers:
                if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                    raise InvalidResponseError(
                        f"response header {name!r} contains a line break; refusing to send it"
                    )
        if message.method == "HEAD" and self._declared is None and length:
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
                message.method,
                message.path,
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

    def write(self, head: bytes, body: bytes, more: bool) -> None:
        transport = self.connection.transport
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
            # A receive() already waiting (a task listening for the client to leave, as
            # Litestar's Stream does) gets http.disconnect now, as a later call would.
            self._wake_receiver()
            if (
                not self._no_body
                and not self._chunked
                and self._declared is not None
                and self._sent < self._declared
            ):
                self.keep_alive = False  # the client sees a short body, then the close
            if self.on_complete is not None and not self.recorded:
                self.recorded = True
                self.on_complete(self)
        if data:
            transport.write(data)
        if not more and self.on_done is not None:
            self.on_done(self)
