"""Generated requests and byte streams against the app port: it must stay up and sane."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import apps
from .conftest import fetch

TOKEN = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
    min_size=1,
    max_size=20,
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "XYZ", ""])
TARGETS = st.one_of(
    st.from_regex(r"/[A-Za-z0-9/%._~?=&-]{0,60}", fullmatch=True),
    st.binary(min_size=0, max_size=40).map(lambda b: "/" + b.decode("latin-1")),
)
HEADER_VALUES = st.binary(min_size=0, max_size=60)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request that is valid, nearly valid, or nonsense."""
    method = draw(METHODS)
    target = draw(TARGETS)
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/9.9", "http/1.1"]))
    headers = draw(st.lists(st.tuples(TOKEN, HEADER_VALUES), max_size=8))
    body = draw(st.binary(max_size=200))
    framing = draw(st.sampled_from(["length", "chunked", "none", "wrong-length"]))
    lines = [f"{method} {target} {version}".encode("latin-1"), b"Host: fuzz"]
    lines += [name.encode() + b": " + value for name, value in headers]
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "wrong-length":
        lines.append(b"Content-Length: %d" % (len(body) + draw(st.integers(-5, 5))))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _send(url: str, data: bytes) -> bytes:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        except (ConnectionResetError, BrokenPipeError):
            reply = b""
    return reply


@pytest.fixture(scope="module")
def fuzz_target() -> Any:
    from sidecar.runner import Sidecar

    from .conftest import Running, make_config

    checker = apps.ScopeChecker()
    running = Running(
        Sidecar(
            make_config(server__header_timeout=2, server__body_timeout=2),
            app=checker,
            process_collectors=False,
        )
    )
    running.wait_serving()
    yield running, checker
    running.stop(force=True)


SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(data=requests())
def test_generated_requests(fuzz_target: Any, data: bytes) -> None:
    running, checker = fuzz_target
    reply = _send(running.app(), data)
    if reply:
        assert reply.startswith(b"HTTP/1."), reply[:80]
    assert checker.violations == []


@SETTINGS
@given(data=st.binary(min_size=1, max_size=300))
def test_random_bytes(fuzz_target: Any, data: bytes) -> None:
    running, checker = fuzz_target
    reply = _send(running.app(), data)
    if reply:
        assert reply.startswith(b"HTTP/1."), reply[:80]
    assert checker.violations == []


def test_still_serving_after_the_fuzzing(fuzz_target: Any) -> None:
    running, checker = fuzz_target
    assert fetch(running.app("/after")).status == 200
    assert fetch(running.admin("/livez")).status == 200
    assert checker.violations == []
    assert checker.calls > 20  # many generated requests were well-formed and reached the app
