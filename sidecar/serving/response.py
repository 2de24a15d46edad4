"""Response heads as bytes: status line, the app's headers, and the framing we add.

Sans-IO: given what the app sent, decide how the body is delimited (the app's
``content-length``, ours for a body sent whole, chunked, or the end of the connection)
and whether the connection may be kept alive, and serialize the head. The app's header
bytes are written as they came, after a check for line breaks (response splitting).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from email.utils import formatdate
from http import HTTPStatus
from types import TracebackType
from typing import BinaryIO, NamedTuple

_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_STATUS_LINES = {
    (version, status): b"HTTP/%s %d %s\r\n" % (version.encode("ascii"), status, reason)
    for version in ("1.1", "1.0")
    for status, reason in _REASONS.items()
}
# Response headers that decide framing and keep-alive (lower-cased).
_FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"connection", b"date"))
ERROR_HEADERS = [(b"content-type", b"text/plain; charset=utf-8")]
#: What a client is told to wait before it tries again after a 503 of ours.
RETRY_AFTER = (b"retry-after", b"1")

Headers = Sequence[tuple[bytes, bytes]]
# Bytes read from a file per write for http.response.pathsend.
_FILE_CHUNK = 256 * 1024


class InvalidResponseError(ValueError):
    """The app's response cannot be sent as it is (bad header bytes or length)."""


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


def reason(status: int) -> bytes:
    """The reason phrase of ``status`` (empty for a code HTTP does not name)."""
    return _REASONS.get(status, b"")


def simple_response(status: int) -> bytes:
    """A complete plain-text response (the status phrase) that closes the connection."""
    body = _REASONS[status]
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, body)]
    lines.extend(b"%s: %s\r\n" % pair for pair in ERROR_HEADERS)
    lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(_date.get())
    lines.append(b"connection: close\r\n\r\n")
    return b"".join(lines) + body


class Head(NamedTuple):
    """A serialized head and the framing it decided for the body.

    ``serialize_head`` returns these fields as a plain tuple (it runs on every response,
    and a plain tuple costs no call); ``Head(*fields)`` names them.
    """

    data: bytes
    #: No body may follow (HEAD, 1xx, 204, 304).
    no_body: bool
    #: The content-length the head declares, if any.
    declared: int | None
    chunked: bool
    keep_alive: bool
    #: The app declared a content-length other than the length of the body it sent.
    mismatch: bool


def serialize_head(
    status: int,
    headers: Headers,
    version: str,
    method: str,
    length: int | None,
    keep_alive: bool,
) -> tuple[bytes, bool, int | None, bool, bool, bool]:
    """Serialize a response head; ``length`` is known for a body sent in one message.

    Decides the framing: the app's Content-Length, else our own for a complete body,
    else chunked (HTTP/1.1) or close-delimited (HTTP/1.0). Raises
    ``InvalidResponseError`` for a header with a line break or a bad content-length.
    """
    no_body = method == "HEAD" or status < 200 or status in (204, 304)
    status_line = _STATUS_LINES.get((version, status))
    if status_line is None:
        status_line = b"HTTP/%s %d %s\r\n" % (version.encode("ascii"), status, reason(status))
    lines = [status_line]
    declared: int | None = None
    chunked = has_date = has_connection = False
    for name, value in headers:
        lines.append(b"%s: %s\r\n" % (name, value))
        lowered = name.lower()
        if lowered not in _FRAMING_HEADERS:
            continue
        if lowered == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise InvalidResponseError(
                    f"response content-length {value!r} is not a number"
                ) from None
        elif lowered == b"transfer-encoding":
            chunked = value.lower() == b"chunked"
        elif lowered == b"connection":
            has_connection = True
            if b"close" in value.lower():
                keep_alive = False
        else:  # date
            has_date = True
    # One line per header, so exactly one CR and one LF each: any other count means a
    # name or value carries a line break (response splitting). Checked on the whole
    # block at once; the culprit is looked for only when there is one.
    block = b"".join(lines[1:])
    if block.count(b"\n") != len(headers) or block.count(b"\r") != len(headers):
        for name, value in headers:
            if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                raise InvalidResponseError(
                    f"response header {name!r} contains a line break; refusing to send it"
                )
    if method == "HEAD" and declared is None and length:
        # The app built the body it would send to a GET; its length is the truth.
        lines.append(b"content-length: %d\r\n" % length)
    elif not no_body and declared is None and not chunked:
        if length is not None:
            lines.append(b"content-length: %d\r\n" % length)
            declared = length
        elif version == "1.1":
            lines.append(b"transfer-encoding: chunked\r\n")
            chunked = True
        else:  # HTTP/1.0 without a length: the end of the body is the end of the connection
            keep_alive = False
    mismatch = declared is not None and length is not None and length != declared and not no_body
    if mismatch:
        keep_alive = False
    if not has_date:
        lines.append(_date.get())
    if not has_connection:
        if not keep_alive and version == "1.1":
            lines.append(b"connection: close\r\n")
        elif keep_alive and version == "1.0":
            lines.append(b"connection: keep-alive\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), no_body, declared, chunked, keep_alive, mismatch


class FileBody:
    """A file sent as a whole response body (``http.response.pathsend``), in chunks.

    Opening and reading happen in the default executor: a file on a slow or network
    filesystem must not stall every other request on the loop.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._handle: BinaryIO | None = None
        self._remaining = 0
        self.size = 0

    async def __aenter__(self) -> FileBody:
        loop = asyncio.get_running_loop()
        try:
            self._handle = await loop.run_in_executor(None, open, self._path, "rb")
        except OSError as exc:
            raise InvalidResponseError(
                f"http.response.pathsend: cannot open {self._path!r}: {exc.strerror or exc}"
            ) from exc
        self.size = self._remaining = os.fstat(self._handle.fileno()).st_size
        return self

    async def read(self) -> tuple[bytes, bool]:
        """The next chunk, and whether more follows."""
        chunk = b""
        if self._remaining and self._handle is not None:
            chunk = await asyncio.get_running_loop().run_in_executor(
                None, self._handle.read, min(_FILE_CHUNK, self._remaining)
            )
        self._remaining -= len(chunk)
        return chunk, bool(chunk) and self._remaining > 0

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.close()
