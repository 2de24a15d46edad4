"""Bridge bugs the framework matrix found, each pinned down with a small raw ASGI app.

Every app here does what a real framework does (named in its docstring); the framework
tests exercise the same paths end to end, these keep them visible without a framework.
"""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

import pytest

from sidecar.types import Receive, Scope, Send

from .conftest import WAIT

BIG = 32 * 1024 * 1024  # far more than loopback socket buffers take at once


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT)


async def raises_after_a_complete_response(scope: Scope, receive: Receive, send: Send) -> None:
    """A large response sent whole, then an exception: a FastAPI background task failing."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"x" * BIG})
    raise RuntimeError("the background task failed")


def test_exception_after_a_complete_response_does_not_truncate_it(
    run_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    running = run_sidecar(raises_after_a_complete_response)
    conn = connect(running.app("/"))
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.getheader("content-length") == str(BIG)
        body = response.read()  # IncompleteRead when the connection is aborted
    finally:
        conn.close()
    assert len(body) == BIG
    running.sync()
    assert "the background task failed" in caplog.text
