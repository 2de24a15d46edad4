"""The control channel between the supervisor and one worker: JSON lines over a socket pair.

Each worker gets one end of a Unix socket pair at exec time (an inherited descriptor):
no shared files, no ports. Messages are JSON objects, one per line, with a ``type``.

From the supervisor: ``config`` (the first message: the worker's configuration and
slot), ``stop`` (``force``: skip what is left of the waits), ``dump`` (log the app
thread's stack). From the worker: ``status`` (every half second and once more just
before it exits: phase, probe verdicts and checks, loop lag, request statistics),
``startup`` (the result of its startup, with the failure's reason and message).

Either side treats the end of the stream as the other side being gone: a worker whose
supervisor died stops at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

Message = dict[str, Any]

# A status message carries request statistics per method, route and status: a few
# hundred kilobytes at the most with the route cap; anything longer is a broken peer.
MAX_LINE = 4 * 1024 * 1024


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


class Channel:
    """One end of the socket pair, used from an event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE)
        return cls(reader, writer)

    async def send(self, message: Message) -> None:
        """Send ``message``; raise ``ConnectionError`` once the other side is gone."""
        if self._writer.is_closing():
            raise ConnectionResetError("the control channel is closed")
        self._writer.write(encode(message))
        await self._writer.drain()

    async def messages(self) -> AsyncIterator[Message]:
        """Every message until the other side closes the channel (or breaks it)."""
        while True:
            try:
                line = await self._reader.readline()
            except (ConnectionError, ValueError):  # reset, or a line past MAX_LINE
                return
            if not line:
                return
            try:
                message = json.loads(line)
            except ValueError:
                return  # not our peer any more
            if isinstance(message, dict):
                yield message

    def close(self) -> None:
        self._writer.close()
