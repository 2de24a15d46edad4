"""One WebSocket connection between aiohttp and an ASGI app (ASGI websocket spec).

aiohttp does the handshake, framing, masking, ping/pong keepalive, message size limit
and permessage-deflate (``web.WebSocketResponse``); this module maps its messages to
ASGI events. Before the app accepts, the app may deny the upgrade with its own HTTP
response (the Websocket Denial Response extension, through ``HttpExchange``); an app
that closes or returns before accepting gives the client a 403.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum

from aiohttp import WSCloseCode, WSMsgType, web

from ..aio import first_of
from ..errors import ClientDisconnected, UnexpectedMessageError
from ..types import Message
from ._aiohttp import AsgiRequest, finished
from .exchange import HttpExchange

logger = logging.getLogger("sidecar.app")

# 1006 is reserved for "closed without a close frame"; it is what the app is told when
# the connection dropped.
_ABNORMAL = 1006
# What the app is told for a close frame that carried no code (ASGI spec; RFC 6455
# 7.1.5); aiohttp reports such a frame as code 0.
_NO_STATUS = 1005


def _sendable(code: int) -> bool:
    """Whether a close frame may carry ``code`` (RFC 6455 7.4; not 1004-1006 or 1015)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


@dataclass(frozen=True)
class WebSocketSettings:
    """Per-connection limits and timers, from ``server.ws_*``."""

    ping_interval: float
    max_message_size: int


class _Stage(Enum):
    CONNECTING = "connecting"  # websocket.connect not yet delivered or answered
    ACCEPTED = "accepted"
    DENYING = "denying"  # the app is sending an HTTP denial response
    CLOSED = "closed"


class WebSocketSession:
    """The ASGI ``receive``/``send`` of one WebSocket connection."""

    def __init__(self, request: AsgiRequest, settings: WebSocketSettings, version: str) -> None:
        self._request = request
        self._settings = settings
        self._stage = _Stage.CONNECTING
        self._connect_delivered = False
        self._ws: web.WebSocketResponse | None = None
        self._accepted = asyncio.Event()
        #: The HTTP side of the handshake: denial responses, and disconnects before accept.
        self.handshake = HttpExchange(
            request.protocol, request.raw_message, request.body, version=version, keep_alive=False
        )
        self._server_close_code: int | None = None
        #: The close code the app was told about, or sent (for logs and tests).
        self.close_code: int | None = None

    @property
    def accepted(self) -> bool:
        return self._ws is not None

    # -- receive ------------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self._connect_delivered:
            self._connect_delivered = True
            return {"type": "websocket.connect"}
        ws = self._ws
        if ws is None:
            # Not accepted (yet): wait for the client to leave, or for the app to accept
            # from another task (Quart reads messages in a task started before accepting).
            await self._accepted_or_gone()
            ws = self._ws
            if ws is None:
                return self._disconnected(_ABNORMAL, "")
        if self._stage is _Stage.CLOSED:
            return self._disconnected(self.close_code or _ABNORMAL, "")
        message = await ws.receive()
        if message.type is WSMsgType.TEXT:
            return {"type": "websocket.receive", "text": message.data}
        if message.type is WSMsgType.BINARY:
            return {"type": "websocket.receive", "bytes": message.data}
        if message.type is WSMsgType.CLOSE:
            code = int(message.data) or _NO_STATUS
            # Answer with the client's own code, as RFC 6455 suggests and uvicorn does
            # (aiohttp's automatic answer would say 1000).
            await ws.close(code=code if _sendable(code) else WSCloseCode.OK, drain=False)
            return self._disconnected(code, message.extra or "")
        if message.type is WSMsgType.ERROR:
            # A protocol error (bad frame, message too large): its own close code is what
            # was sent to the client, so it is what the app is told.
            logger.info("websocket error from %s: %s", self._request.remote, message.data)
            error_code = getattr(message.data, "code", None)
            if error_code is not None:
                return self._disconnected(int(error_code), "")
        code = self._server_close_code or ws.close_code or _ABNORMAL
        return self._disconnected(int(code), "")

    async def _accepted_or_gone(self) -> None:
        await first_of(self._accepted.wait(), self.handshake.receive_disconnect())

    def _disconnected(self, code: int, reason: str) -> Message:
        self._stage = _Stage.CLOSED
        self.close_code = code
        return {"type": "websocket.disconnect", "code": code, "reason": reason}

    # -- send ---------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        stage = self._stage
        if kind == "websocket.send" and stage is _Stage.ACCEPTED:
            await self._send_data(message)
        elif kind == "websocket.accept" and stage is _Stage.CONNECTING:
            await self._accept(message)
        elif kind == "websocket.close" and stage in (_Stage.CONNECTING, _Stage.ACCEPTED):
            await self._close(message)
        elif kind.startswith("websocket.http.response.") and stage in (
            _Stage.CONNECTING,
            _Stage.DENYING,
        ):
            self._stage = _Stage.DENYING
            await self.handshake.send({**message, "type": kind.removeprefix("websocket.")})
        elif stage is _Stage.CLOSED and kind in ("websocket.send", "websocket.close"):
            raise ClientDisconnected("the WebSocket is closed")
        else:
            raise UnexpectedMessageError(message, self._expected())

    def _expected(self) -> tuple[str, ...]:
        if self._stage is _Stage.CONNECTING:
            return (
                "websocket.accept",
                "websocket.close",
                "websocket.http.response.start",
            )
        if self._stage is _Stage.ACCEPTED:
            return ("websocket.send", "websocket.close")
        if self._stage is _Stage.DENYING:
            return ("websocket.http.response.body",)
        return ("nothing: the connection is closed",)

    async def _accept(self, message: Message) -> None:
        subprotocol = message.get("subprotocol")
        settings = self._settings
        ws = web.WebSocketResponse(
            protocols=(subprotocol,) if subprotocol else (),
            heartbeat=settings.ping_interval or None,
            max_msg_size=settings.max_message_size,
            autoclose=False,  # receive() answers a close frame itself
        )
        for name, value in message.get("headers", ()):
            ws.headers.add(name.decode("latin-1"), value.decode("latin-1"))
        try:
            await ws.prepare(self._request)
        except ConnectionError as exc:
            self._stage = _Stage.CLOSED
            raise ClientDisconnected("the client left during the handshake") from exc
        self._ws = ws
        self._stage = _Stage.ACCEPTED
        self._accepted.set()

    async def _send_data(self, message: Message) -> None:
        ws = self._ws
        if ws is None:  # pragma: no cover - guarded by the stage
            raise UnexpectedMessageError(message, self._expected())
        data_bytes = message.get("bytes")
        text = message.get("text")
        if (data_bytes is None) == (text is None):
            raise UnexpectedMessageError(
                message, ("websocket.send with exactly one of 'bytes' or 'text'",)
            )
        if ws.closed:
            raise ClientDisconnected("the WebSocket is closed")
        try:
            if text is not None:
                await ws.send_str(text)
            elif data_bytes is not None:
                await ws.send_bytes(data_bytes)
        except ConnectionError as exc:
            raise ClientDisconnected("the client closed the connection") from exc

    async def _close(self, message: Message) -> None:
        code = int(message.get("code") or WSCloseCode.OK)
        reason = message.get("reason") or ""
        if self._ws is None:
            # Closing before accepting is a refusal: the spec's answer is HTTP 403.
            self._stage = _Stage.CLOSED
            self.close_code = code
            self.handshake.fail(403)
            return
        self._stage = _Stage.CLOSED
        self.close_code = code
        await self._ws.close(code=code, message=reason.encode("utf-8"))

    # -- the end of the app call ------------------------------------------------------

    async def finish(self, error: BaseException | None) -> web.StreamResponse:
        """Close what the app left open and return what aiohttp should see."""
        ws = self._ws
        if ws is not None:
            if not ws.closed:
                # An app that raised gets 1011 (internal error); one that returned
                # without closing gets a normal close.
                code = WSCloseCode.INTERNAL_ERROR if error is not None else WSCloseCode.OK
                self.close_code = int(code)
                await ws.close(code=code)
            return ws
        if self._stage is _Stage.DENYING:
            if not self.handshake.complete:
                self.handshake.fail()
            return finished()
        if not self.handshake.started and not self.handshake.disconnected:
            self.handshake.fail(500 if error is not None else 403)
        return finished()

    async def shutdown(self, code: int) -> None:
        """Close an accepted WebSocket from the server side (the sidecar is stopping)."""
        ws = self._ws
        if ws is None or ws.closed:
            return
        self._server_close_code = code
        await ws.close(code=code, message=b"server shutting down")
