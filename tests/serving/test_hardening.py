"""Bad input and hostile clients: each gets a defined answer, and the app never sees it."""

from __future__ import annotations

import gzip
import logging
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from .. import apps
from ..conftest import fetch


def exchange_raw(url: str, data: bytes, *, timeout: float = 30) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


BAD_REQUESTS = {
    "malformed request line": b"GARBAGE\r\n\r\n",
    "invalid header bytes": b"GET / HTTP/1.1\r\nHost: x\r\nBad\x00Name: v\r\n\r\n",
    "header line too large": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    + b"\r\n",
    "request line too long": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "content-length and transfer-encoding": b"POST / HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two content-lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "invalid chunk size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
    "unsupported HTTP version": b"GET / HTTP/3.0\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_requests_get_400_and_never_reach_the_app(run_sidecar: Any, name: str) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder, server__max_headers=100)
    reply = exchange_raw(running.app(), BAD_REQUESTS[name])
    status_line = reply.split(b"\r\n", 1)[0]
    assert status_line.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400", b"HTTP/1.1 505")), reply[:200]
    assert recorder.scopes == []
    # the server is still fine
    assert fetch(running.app("/after")).status == 200


def test_body_over_the_limit_by_content_length_is_413_before_the_app(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder, server__max_body_size=1000)
    reply = exchange_raw(
        running.app(),
        b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n"
        + b"x" * 5000,
    )
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert recorder.scopes == []


def test_refused_requests_are_in_the_access_log(
    run_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.access")
    running = run_sidecar(apps.Recorder(), server__max_body_size=1000, logging__access_log=True)
    exchange_raw(
        running.app(),
        b"POST /too-big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n"
        + b"x" * 5000,
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.access"]
    assert any('"POST /too-big HTTP/1.1" 413' in line for line in lines), lines


def test_chunked_body_over_the_limit_is_cut_with_413(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder, server__max_body_size=1000)
    chunk = b"x" * 800
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    reply = exchange_raw(
        running.app(),
        b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
    )
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert recorder.messages[-1][-1] == {"type": "http.disconnect"}


def test_gzip_bodies_reach_the_app_as_sent(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder)
    payload = gzip.compress(b"hello " * 100)
    reply = fetch(
        running.app("/gz"), "POST", body=payload, headers={"Content-Encoding": "gzip"}
    ).json()
    assert reply["body_len"] == len(payload)


def test_slow_request_head_is_cut_after_the_header_timeout(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder, server__header_timeout=0.3)
    parts = urlsplit(running.app())
    assert parts.hostname is not None
    assert parts.port is not None
    began = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # ... and never the rest
        assert sock.recv(1024) == b""  # closed by the server
    assert time.monotonic() - began < 10
    assert recorder.scopes == []
    assert running.sidecar.app_server.connections.timed_out == 1


def test_slow_request_body_is_cut_after_the_body_timeout(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder, server__body_timeout=0.3)
    reply = exchange_raw(
        running.app(), b"POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"
    )
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert recorder.messages[-1][-1] == {"type": "http.disconnect"}


def test_connections_beyond_the_cap_get_503(run_sidecar: Any) -> None:
    running = run_sidecar(apps.Recorder(), server__max_connections=2)
    parts = urlsplit(running.app())
    assert parts.hostname is not None
    assert parts.port is not None
    held = [socket.create_connection((parts.hostname, parts.port), timeout=30) for _ in range(2)]
    try:
        # the two held connections are idle but open; the third is refused
        reply = exchange_raw(running.app(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503 Service Unavailable")
        assert b"retry-after: 1" in reply
    finally:
        for sock in held:
            sock.close()


def test_requests_beyond_the_in_flight_cap_get_503_with_retry_after(run_sidecar: Any) -> None:
    app = apps.SlowRequests()
    running = run_sidecar(app, server__max_requests_in_flight=1)
    slow = threading.Thread(target=fetch, args=(running.app("/slow"),))
    slow.start()
    assert app.entered.wait(30)
    try:
        refused = fetch(running.app("/fast"))
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
    finally:
        app.release()
        slow.join(30)
    assert fetch(running.app("/fast")).status == 200  # and recovers
