"""Connection handling on the app port: pipelining, unread bodies, upgrades, keep-alive."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
from typing import Any

from .. import apps
from ..conftest import WAIT, fetch, open_socket

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_responses(
    sock: socket.socket, count: int, rest: list[bytes] | None = None
) -> list[tuple[bytes, bytes]]:
    """Read ``count`` complete responses (all with content-length) from ``sock``.

    Bytes read past the last response are appended to ``rest`` when given.
    """
    buffer = b""
    responses: list[tuple[bytes, bytes]] = []
    while len(responses) < count:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buffer[:head_end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(buffer) >= end:
                responses.append((head, buffer[head_end + 4 : end]))
                buffer = buffer[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(responses)} of {count} responses"
        buffer += chunk
    if rest is not None:
        rest.append(buffer)
    return responses


def test_many_pipelined_requests_are_all_answered_in_order(run_sidecar: Any) -> None:
    # More than the parser queues at once: reading pauses and resumes as they are served.
    running = run_sidecar(apps.Recorder())
    count = 200
    with open_socket(running.app()) as sock:
        sock.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(count)))
        responses = read_responses(sock, count)
    paths = [body.split(b'"path": "')[1].split(b'"')[0] for _, body in responses]
    assert paths == [b"/p%d" % i for i in range(count)]


def test_a_body_the_app_did_not_read_is_discarded_and_the_connection_reused(
    run_sidecar: Any,
) -> None:
    running = run_sidecar(apps.faulty)  # answers /fine without reading the body
    body = os.urandom(300_000)  # several times what is buffered before reading pauses
    with open_socket(running.app()) as sock:
        sock.sendall(b"POST /fine HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        sock.sendall(body)
        sock.sendall(b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second = read_responses(sock, 2)
    assert first[0].startswith(b"HTTP/1.1 200")
    assert b"connection: close" not in first[0].lower()
    assert second[0].startswith(b"HTTP/1.1 200")


def upgrade_request(key: bytes, path: bytes = b"/echo") -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        + key
        + b"\r\n\r\n"
    )


def test_websocket_upgrade_after_requests_on_the_same_connection(run_sidecar: Any) -> None:
    app = apps.WebSocketApp()
    running = run_sidecar(app)
    key = base64.b64encode(os.urandom(16))
    upgrade = upgrade_request(key)
    with open_socket(running.app()) as sock:
        # A plain request first, then the upgrade pipelined with it, then a frame that
        # arrives with the upgrade request: nothing may be lost on the way to aiohttp.
        frame = _masked_text_frame(b"hello")
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n" + upgrade + frame)
        rest: list[bytes] = []
        ((head, body),) = read_responses(sock, 1, rest)
        assert head.startswith(b"HTTP/1.1 200")
        assert body == b"ok"
        reply = rest[0]
        while b"echo:hello" not in reply:
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 101")
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    assert b"Sec-WebSocket-Accept: " + accept in reply
    assert app.accepted.is_set()


def _masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def test_connect_is_answered_by_the_app_then_the_connection_closes(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder)
    with open_socket(running.app()) as sock:
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nstray")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in reply
    assert recorder.scopes[-1]["method"] == "CONNECT"


def test_idle_keep_alive_connections_are_closed_after_the_timeout(run_sidecar: Any) -> None:
    running = run_sidecar(apps.Recorder(), server__keep_alive_timeout=0.2)
    with open_socket(running.app()) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_responses(sock, 1)
        assert sock.recv(1024) == b""  # closed by the server once idle long enough
    assert fetch(running.app("/after")).status == 200


class _BodyWatcher:
    """Reads the body; tells the test when a first part arrived and what came next."""

    def __init__(self) -> None:
        self.first_part = threading.Event()
        self.ended = threading.Event()
        self.last: dict[str, Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("no lifespan here")
        while True:
            message = await receive()
            if message.get("more_body"):
                self.first_part.set()
                continue
            self.last = message
            self.ended.set()
            return


def test_a_client_that_leaves_mid_body_is_seen_by_the_app(run_sidecar: Any) -> None:
    app = _BodyWatcher()
    running = run_sidecar(app)
    with open_socket(running.app()) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npart")
        assert app.first_part.wait(WAIT)
    assert app.ended.wait(WAIT)  # the app is not left waiting for the rest
    assert app.last == {"type": "http.disconnect"}


def test_a_body_that_breaks_chunked_framing_midway_gets_400(run_sidecar: Any) -> None:
    app = _BodyWatcher()
    running = run_sidecar(app)
    with open_socket(running.app()) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        assert app.first_part.wait(WAIT)
        sock.sendall(b"zz\r\nbroken\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert app.ended.wait(WAIT)
    assert app.last == {"type": "http.disconnect"}


def test_websockets_count_towards_the_connection_cap(run_sidecar: Any) -> None:
    app = apps.WebSocketApp()
    running = run_sidecar(app, server__max_connections=2)
    with open_socket(running.app()) as websocket, open_socket(running.app()) as held:
        websocket.sendall(upgrade_request(base64.b64encode(os.urandom(16))))
        assert websocket.recv(65536).startswith(b"HTTP/1.1 101")
        held.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        read_responses(held, 1)
        # One WebSocket and one keep-alive connection are open: a third is refused.
        with open_socket(running.app()) as third:
            third.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
            ((head, _),) = read_responses(third, 1)
    assert head.startswith(b"HTTP/1.1 503 ")
