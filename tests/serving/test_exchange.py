"""Expect: 100-continue, pathsend, proxy headers and TLS on the app port."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme

from .. import apps
from ..conftest import fetch, open_socket


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_100_continue_is_sent_when_the_app_reads_the_body(run_sidecar: Any) -> None:
    running = run_sidecar(apps.BodyReader())
    with open_socket(running.app()) as sock:
        sock.sendall(
            b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = _read_head(sock)  # the client waits for this before sending the body
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        final = _read_head(sock)
        while not final.endswith(b"read 5"):
            final += sock.recv(4096)
    assert final.startswith(b"HTTP/1.1 200 OK")


def test_no_100_continue_when_the_app_answers_from_the_headers(run_sidecar: Any) -> None:
    running = run_sidecar(apps.BodyReader())
    with open_socket(running.app()) as sock:
        sock.sendall(
            b"POST /reject HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413 Request Entity Too Large")
    assert b"100 Continue" not in reply


def test_pathsend_sends_the_file(run_sidecar: Any, tmp_path: Path) -> None:
    content = bytes(range(256)) * 4000  # about 1 MB, several chunks
    target = tmp_path / "blob.bin"
    target.write_bytes(content)
    running = run_sidecar(apps.pathsend_app(str(target)))
    reply = fetch(running.app("/"))
    assert reply.status == 200
    assert reply.headers["content-length"] == str(len(content))
    assert hashlib.sha256(reply.body).digest() == hashlib.sha256(content).digest()
    head = fetch(running.app("/"), "HEAD")
    assert head.body == b""
    assert head.headers["content-length"] == str(len(content))


def test_pathsend_of_a_missing_file_is_a_500(
    run_sidecar: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = run_sidecar(apps.pathsend_app(str(tmp_path / "x")))
    assert fetch(running.app("/missing")).status == 500
    assert "http.response.pathsend: cannot open" in caplog.text


FORWARDED_CASES = [
    # (trusted, headers, expected client host, scheme, host header)
    ("", {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
     "127.0.0.1", "http", None),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
                   "X-Forwarded-Host": "shop.example"}, "203.0.113.7", "https", "shop.example"),
    # a client-forged entry to the left of the real one is skipped
    ("127.0.0.1", {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}, "203.0.113.7", "http", None),
    # a chain of trusted proxies is walked through
    ("127.0.0.0/8, 10.0.0.0/8", {"X-Forwarded-For": "203.0.113.7, 10.1.2.3"},
     "203.0.113.7", "http", None),
    ("*", {"Forwarded": 'for="[2001:db8::17]:4711";proto=https;host=api.example'},
     "2001:db8::17", "https", "api.example"),
    ("127.0.0.1", {"Forwarded": "for=198.51.100.9;proto=http, for=127.0.0.1"},
     "198.51.100.9", "http", None),
    # a hop seen as IPv4-mapped IPv6 matches an IPv4 list
    ("127.0.0.1, 10.0.0.0/8", {"X-Forwarded-For": "203.0.113.7, ::ffff:10.1.2.3"},
     "203.0.113.7", "http", None),
]  # fmt: skip


@pytest.mark.parametrize(("trusted", "headers", "client", "scheme", "host"), FORWARDED_CASES)
def test_proxy_headers(
    run_sidecar: Any,
    trusted: str,
    headers: dict[str, str],
    client: str,
    scheme: str,
    host: str | None,
) -> None:
    running = run_sidecar(apps.whoami, server__trusted_proxies=trusted)
    document = fetch(running.app("/"), headers=headers).json()
    assert document["client"][0] == client
    assert document["scheme"] == scheme
    if host is not None:
        assert document["host"] == host
    else:
        assert document["host"].startswith("127.0.0.1:")


def test_tls_on_the_app_port(run_sidecar: Any, tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    certificate.private_key_pem.write_to_path(str(keyfile))
    running = run_sidecar(
        apps.whoami, server__tls_certfile=str(certfile), server__tls_keyfile=str(keyfile)
    )
    context = ssl.create_default_context()
    authority.configure_trust(context)
    parts = urlsplit(running.app())
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=30)
    conn.request("GET", "/")
    document = json.loads(conn.getresponse().read())
    conn.close()
    assert document["scheme"] == "https"
    # plain HTTP on the TLS port is not served
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        fetch(running.app("/"))


def _headers_app(headers: list[tuple[bytes, bytes]]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("no lifespan here")
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello"})

    return app


@pytest.mark.parametrize(
    "header",
    [
        (b"x-note", b"fine\r\nset-cookie: injected=1"),
        (b"x-note", b"bare\nline feed"),
        (b"x-note", b"bare\rcarriage return"),
        (b"x-no\r\nte", b"value"),
    ],
)
def test_a_header_with_a_line_break_is_never_sent(
    run_sidecar: Any, header: tuple[bytes, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    running = run_sidecar(_headers_app([(b"content-type", b"text/plain"), header]))
    reply = fetch(running.app("/split"))
    assert reply.status == 500
    assert "injected" not in str(reply.headers)
    assert "line break" in caplog.text


def test_ordinary_headers_pass_through_byte_for_byte(run_sidecar: Any) -> None:
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"X-Dup", b"one"),
        (b"x-dup", b"two"),
        (b"X-Spaces", b"a  b\tc"),
    ]
    running = run_sidecar(_headers_app(headers))
    with open_socket(running.app()) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = _read_head(sock)
    lines = head.split(b"\r\n")
    for name, value in headers:
        assert name + b": " + value in lines


def test_a_forwarded_host_that_no_scope_can_carry_gets_400(
    run_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # ASGI header values are bytes in latin-1: a UTF-8 host from a trusted proxy has no
    # place in the scope. The request is refused, and the server keeps its books.
    recorder = apps.Recorder()
    running = run_sidecar(recorder, server__trusted_proxies="127.0.0.1")
    with open_socket(running.app()) as sock:
        sock.sendall(
            b"GET /f HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: \xe6\x97\xa5.example\r\n"
            b"Connection: close\r\n\r\n"
        )
        head = _read_head(sock)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert recorder.scopes == []
    assert running.sidecar.app_server.in_flight == 0
    assert fetch(running.app("/after")).status == 200
