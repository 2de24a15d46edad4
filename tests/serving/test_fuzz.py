"""Generated requests and byte streams against the app port: it must stay up and sane."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .. import apps
from ..conftest import fetch

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
    # No half-close: a client that shuts its sending side down would make the server
    # drop the request. The server ends every exchange itself: the requests ask for
    # "Connection: close", bad ones get 400 and a close, and incomplete ones are cut by
    # the fixture's short header and body timeouts.
    reply = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                reply += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return reply


@pytest.fixture(scope="module")
def fuzz_target() -> Any:
    from sidecar.runner import Sidecar

    from ..conftest import Running, make_config

    checker = apps.ScopeChecker()
    running = Running(
        Sidecar(
            make_config(server__header_timeout=0.5, server__body_timeout=0.5),
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


_ANSWERED_BY_THE_APP: list[bytes] = []


@SETTINGS
@example(data=b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
@example(data=b"POST /p HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
@given(data=requests())
def test_generated_requests(fuzz_target: Any, data: bytes) -> None:
    running, checker = fuzz_target
    reply = _send(running.app(), data)
    if reply:
        assert reply.startswith(b"HTTP/1."), reply[:80]
    if reply.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        _ANSWERED_BY_THE_APP.append(data)  # only the app answers 200
    assert checker.violations == []


@settings(SETTINGS, max_examples=80)
@given(data=st.binary(min_size=1, max_size=300))
def test_random_bytes(fuzz_target: Any, data: bytes) -> None:
    running, checker = fuzz_target
    # ending with an empty line makes most garbage a complete (invalid) head at once
    reply = _send(running.app(), data + b"\r\n\r\n")
    if reply:
        assert reply.startswith(b"HTTP/1."), reply[:80]
    assert checker.violations == []


def test_still_serving_after_the_fuzzing(fuzz_target: Any) -> None:
    running, checker = fuzz_target
    assert fetch(running.app("/after")).status == 200
    assert fetch(running.admin("/livez")).status == 200
    assert checker.violations == []
    # every request answered 200 went through the app, and its scope was checked
    assert len(_ANSWERED_BY_THE_APP) >= 10, len(_ANSWERED_BY_THE_APP)
    assert checker.calls >= len(_ANSWERED_BY_THE_APP)
