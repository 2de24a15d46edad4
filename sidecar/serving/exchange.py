"""One HTTP request/response between a client connection and an ASGI app.

Responses do not go through aiohttp's response objects. The app's header bytes are
written as they came (checked for CR/LF, never decoded and re-encoded), a complete
response leaves in one ``transport.write``, and the connection is told when the
response is done, so it can serve its next request. Responses are written as soon as
the app sends them, so work an app does after its response (Starlette background
tasks) does not delay the client.

The connection is either the sidecar's own (``connection.HttpConnection``) or, for the
HTTP side of a WebSocket handshake, aiohttp's server protocol; both are aiohttp
protocols, which give write flow control. Heads are serialized by ``response``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ..errors import ClientDisconnected, UnexpectedMessageError
from ..types import ASGIApp, Message, Scope
from ._aiohttp import EMPTY_PAYLOAD, RawRequestMessage, StreamReader, drain
from .access import REQUEST_ID_HEADER
from .body import NO_LIMITS, BodyLimits, BodyRefused, read_piece
from .response import (
    ERROR_HEADERS,
    RETRY_AFTER,
    FileBody,
    reason,
    serialize_head,
)

logger = logging.getLogger("sidecar.app")


class Connection(Protocol):
    """The connection an exchange writes to (an aiohttp protocol: write flow control)."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def force_close(self) -> None: ...


Recorder = Callable[["HttpExchange"], None]


class HttpExchange:
    """One request/response between a connection and the app.

    The exchange owns its state: the server and the connection read it (``status``,
    ``started``, ``complete``, ``keep_alive``...) and change it only through methods.
    """

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
        "_on_complete",
        "_on_done",
        "_received",
        "_recorded",
        "_request_id",
        "_sent",
        "_task",
        "client",
        "complete",
        "connection",
        "disconnected",
        "keep_alive",
        "message",
        "payload",
        "scope",
        "server",
        "started",
        "started_at",
        "status",
        "version",
    )

    def __init__(
        self,
        connection: Connection,
        message: RawRequestMessage,
        payload: StreamReader,
        version: str,
        keep_alive: bool,
        limits: BodyLimits = NO_LIMITS,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        on_done: Recorder | None = None,
    ) -> None:
        self.connection = connection
        self.message = message
        self.payload = payload
        #: The HTTP version, ``"1.1"`` or ``"1.0"``.
        self.version = version
        #: The peer and local addresses as ASGI ``client``/``server`` tuples.
        self.client = client
        self.server = server
        self._limits = limits
        self._received = 0
        self._body_done = False
        self._disconnect_waiter: asyncio.Future[None] | None = None
        self._ending = False
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._chunked = False
        self._continued = False
        self._no_body = False
        self._declared: int | None = None
        # Body bytes written (not counting chunk framing).
        self._sent = 0
        self._request_id: bytes | None = None
        #: The scope the app was called with (None for a request refused before it).
        self.scope: Scope | None = None
        self.status = 0
        #: Whether the connection may serve another request after this one.
        self.keep_alive = keep_alive
        # Called once per exchange that ran the app, just before the last bytes of the
        # response are written (so that whatever it records is in place before the
        # client can see the response), or when the app call ends without a response.
        self._on_complete: Recorder | None = None
        self._recorded = False
        # Called once, after the last bytes of the response were handed to the transport.
        self._on_done = on_done
        self.started_at = time.perf_counter()
        #: The status line has been written: an error can no longer become a 500.
        self.started = False
        self.complete = False
        self.disconnected = False
        self._task: asyncio.Task[None] | None = None

    # -- the app call -------------------------------------------------------------------

    def run(
        self,
        app: ASGIApp,
        scope: Scope,
        *,
        on_complete: Recorder | None,
        on_end: Recorder,
    ) -> None:
        """Run the app on this exchange in a task of its own (returns at once).

        ``on_complete`` records the request exactly once; ``on_end`` is called when the
        app call has ended, however it ended.
        """
        self._on_complete = on_complete
        self.scope = scope
        self._task = asyncio.get_running_loop().create_task(self._call(app, scope, on_end))

    async def _call(self, app: ASGIApp, scope: Scope, on_end: Recorder) -> None:
        method, path = self.message.method, scope["path"]
        try:
            await app(scope, self.receive, self.send)
        except Exception as exc:
            if self.disconnected and isinstance(exc, ClientDisconnected):
                logger.debug("client left during %s %s", method, path)
            else:
                logger.exception("exception in ASGI app while handling %s %s", method, path)
            self.fail()
        else:
            if not self.complete and self._ending and not self.started:
                # The app stopped because the server told it the exchange was over.
                self.fail(503, [RETRY_AFTER])
            elif not self.complete and not self.disconnected:
                logger.error(
                    "ASGI app returned %s the response to %s %s",
                    "before finishing" if self.started else "without sending",
                    method,
                    path,
                )
                self.fail()
        finally:
            on_end(self)
        if not self._recorded and self._on_complete is not None:
            self._record()  # no response reached the client

    def _record(self) -> None:
        self._recorded = True
        if self._on_complete is not None:
            self._on_complete(self)

    def cancel(self) -> None:
        """Cancel the app call serving this exchange (the graceful deadline has passed)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    def cut(self) -> bool:
        """End the exchange now (the graceful deadline has passed); return if answered.

        A request whose response has not started is answered ``503`` with
        ``retry-after`` and ``connection: close``, so the client can tell it from a
        network failure and retry elsewhere; a started response is cut when the app call
        ends. Either way the app is told the client is gone.
        """
        answered = not self.started and not self.complete
        if answered:
            self.fail(503, [RETRY_AFTER], close=True)
        self.disconnect()
        return answered

    def close_connection(self) -> None:
        """Close the connection after this response (the server is stopping)."""
        self.keep_alive = False

    def set_request_id(self, value: str) -> None:
        """Send ``x-request-id: value`` with the response, unless the app sends its own."""
        self._request_id = value.encode("ascii")

    @property
    def request_id(self) -> str | None:
        """The id ``set_request_id`` gave this request."""
        value = self._request_id
        return value.decode("ascii") if value is not None else None

    @property
    def bytes_sent(self) -> int:
        """Body bytes written so far (without chunked framing)."""
        return self._sent

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
            try:
                chunk = await read_piece(content, self._limits, self._received)
            except BodyRefused as exc:
                logger.info("%s %s: %s; closing", message.method, message.path, exc.reason)
                self._refuse_body(exc.status)
                return {"type": "http.disconnect"}
            except Exception:  # the connection was lost while reading the body
                self.disconnect()
                return {"type": "http.disconnect"}
            self._received += len(chunk)
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
        if self.version != "1.1" or self.started:
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
            # Disconnected first: an exchange the server cut may have been answered for
            # the app, which then only needs to hear that the client is gone.
            if self.disconnected:
                raise ClientDisconnected("the client closed the connection")
            if self._headers is None or self.complete:
                expected = "http.response.start" if self._headers is None else "nothing more"
                raise UnexpectedMessageError(message, (expected,))
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if not self.started:
                head = self._head(None if more else len(body))
                self.started = True
                self._write(head, body, more)
            else:
                self._write(b"", body, more)
            if more:
                # Returns at once unless the client reads slower than the app writes.
                await drain(self.connection)
            return
        if kind == "http.response.start":
            if self.disconnected:
                raise ClientDisconnected("the client closed the connection")
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
        async with FileBody(path) as file:
            head = self._head(file.size)
            self.started = True
            while True:
                chunk, more = await file.read()
                self._write(head, chunk, more)
                head = b""
                if not more:
                    return
                await drain(self.connection)

    def fail(
        self,
        status: int = 500,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        close: bool = False,
    ) -> None:
        """Answer ``status`` when nothing was sent yet; otherwise cut the connection.

        ``close`` ends the connection after the answer (a request refused mid-stream).

        A response that already started cannot be turned into an error, and ending it
        normally would make a truncated body look complete to the client. A complete
        response (the app raised afterwards, in a background task) is left to be
        delivered: aborting would drop what the transport still buffers.
        """
        if close:
            self.keep_alive = False
        if self.complete:
            self.keep_alive = False
            return
        if self.started or self.disconnected:
            self.keep_alive = False
            transport = self.connection.transport
            if transport is not None:
                transport.abort()
            return
        body = reason(status)
        self.status = status
        self._headers = [*ERROR_HEADERS, *(extra or ())]
        self._declared = None
        self._chunked = False
        self.started = True
        try:
            self._write(self._head(len(body)), body, False)
        except ClientDisconnected:
            self.keep_alive = False

    def _head(self, length: int | None) -> bytes:
        """Serialize the status line and headers and decide the framing of the body."""
        message = self.message
        headers: Sequence[tuple[bytes, bytes]] = self._headers or ()
        request_id = self._request_id
        if request_id is not None and not any(
            name.lower() == REQUEST_ID_HEADER for name, _ in headers
        ):
            headers = [*headers, (REQUEST_ID_HEADER, request_id)]
        # Positional and unpacked at once: this runs on every response.
        data, no_body, declared, chunked, keep_alive, mismatch = serialize_head(
            self.status, headers, self.version, message.method, length, self.keep_alive
        )
        if mismatch:
            logger.error(
                "%s %s: the app declared content-length %s but sent %d bytes; "
                "closing the connection",
                message.method,
                message.path,
                declared,
                length,
            )
        self._no_body, self._declared, self._chunked = no_body, declared, chunked
        self.keep_alive = keep_alive
        return data

    def _write(self, head: bytes, body: bytes, more: bool) -> None:
        transport = self.connection.transport
        if transport is None or transport.is_closing():
            self.disconnect()
            raise ClientDisconnected("the client closed the connection")
        if self._no_body:
            data = head
        elif self._chunked:
            self._sent += len(body)
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
            if not self._recorded and self._on_complete is not None:
                self._record()
        if data:
            transport.write(data)
        if not more and self._on_done is not None:
            self._on_done(self)
