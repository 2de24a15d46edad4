"""Response heads: framing decisions and the response-splitting guard, without sockets."""

from __future__ import annotations

import re

import pytest

from sidecar.serving.response import (
    Head,
    InvalidResponseError,
    reason,
    serialize_head,
    simple_response,
)

DATE = re.compile(rb"date: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n")


def _head(
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    version: str = "1.1",
    method: str = "GET",
    length: int | None = 5,
    keep_alive: bool = True,
) -> tuple[bytes, Head]:
    head = Head(
        *serialize_head(
            status,
            headers or [],
            version=version,
            method=method,
            length=length,
            keep_alive=keep_alive,
        )
    )
    return DATE.sub(b"", head.data), head


def test_a_whole_body_gets_our_content_length() -> None:
    data, head = _head(headers=[(b"Content-Type", b"text/plain")])
    assert data == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\n\r\n"
    assert head == Head(
        head.data, no_body=False, declared=5, chunked=False, keep_alive=True, mismatch=False
    )


def test_a_streamed_body_is_chunked_on_http_11_and_close_delimited_on_10() -> None:
    data, head = _head(length=None)
    assert b"transfer-encoding: chunked\r\n" in data
    assert head.chunked
    data, head = _head(length=None, version="1.0")
    assert b"transfer-encoding" not in data
    assert b"content-length" not in data
    assert not head.keep_alive


def test_the_apps_own_framing_headers_are_kept_as_sent() -> None:
    data, head = _head(headers=[(b"Content-Length", b"5"), (b"Date", b"yesterday")])
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: yesterday\r\n\r\n"
    assert head.declared == 5


def test_a_declared_length_other_than_the_body_closes_the_connection() -> None:
    data, head = _head(headers=[(b"content-length", b"9")], length=5)
    assert head.mismatch
    assert not head.keep_alive
    assert data.endswith(b"connection: close\r\n\r\n")


@pytest.mark.parametrize("status", [204, 304, 101])
def test_bodiless_statuses_get_no_length(status: int) -> None:
    data, head = _head(status, length=0)
    assert b"content-length" not in data
    assert head.no_body


def test_head_requests_state_the_length_of_the_get_body() -> None:
    data, head = _head(method="HEAD", length=42)
    assert b"content-length: 42\r\n" in data
    assert head.no_body


def test_keep_alive_is_said_where_the_version_needs_it() -> None:
    assert _head(version="1.0")[0].endswith(b"connection: keep-alive\r\n\r\n")
    assert _head(keep_alive=False)[0].endswith(b"connection: close\r\n\r\n")
    _, head = _head(headers=[(b"Connection", b"close")])
    assert not head.keep_alive


def test_an_unknown_status_gets_an_empty_reason() -> None:
    assert _head(599)[0].startswith(b"HTTP/1.1 599 \r\n")
    assert reason(599) == b""
    assert reason(503) == b"Service Unavailable"


@pytest.mark.parametrize(
    "header",
    [(b"x-evil", b"a\r\nSet-Cookie: x=1"), (b"x-evil\n", b"a"), (b"x", b"line\rbreak")],
)
def test_line_breaks_in_headers_are_refused(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(InvalidResponseError, match="contains a line break"):
        _head(headers=[header])


def test_a_content_length_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(InvalidResponseError, match="is not a number"):
        _head(headers=[(b"content-length", b"five")])


def test_simple_response_closes() -> None:
    data = DATE.sub(b"", simple_response(400))
    assert data == (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 11\r\nconnection: close\r\n\r\nBad Request"
    )
