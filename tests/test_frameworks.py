"""Starlette and FastAPI apps with lifespan-managed state under ``sidecar run``."""

from __future__ import annotations

import json
import signal
from typing import Any

from .conftest import LOOPBACK, fetch


def test_starlette_app_with_lifespan_state(cli: Any) -> None:
    proc = cli(
        "run", "framework_apps:starlette_app", *LOOPBACK, "--lifespan", "on", "--drain-delay", "0"
    )
    proc.wait_serving()
    first = fetch(proc.app_url + "/").json()
    second = fetch(proc.app_url + "/").json()
    assert first == {"name": "starlette", "open": True, "queries": 1}
    assert second["queries"] == 2  # the pool object is shared between requests
    assert fetch(proc.app_url + "/echo", "POST", body=b"payload").body == b"payload"
    stream = fetch(proc.app_url + "/stream")
    assert stream.text == "line 0\nline 1\nline 2\n"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert fetch(proc.app_url + "/missing").status == 404
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "lifespan shutdown complete" in proc.log()
    assert proc.proc.stdout is not None
    assert "starlette lifespan shutdown: pool closed" in proc.proc.stdout.read()


def test_fastapi_app_with_lifespan_state(cli: Any) -> None:
    proc = cli(
        "run", "framework_apps:fastapi_app", *LOOPBACK, "--lifespan", "on", "--drain-delay", "0"
    )
    proc.wait_serving()
    reply = fetch(proc.app_url + "/items/7?q=x")
    assert reply.status == 200
    assert reply.json() == {"item_id": 7, "q": "x", "greeting": "hello from fastapi"}
    created = fetch(
        proc.app_url + "/items",
        "POST",
        body=json.dumps({"name": "widget"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert created.json() == {"created": {"name": "widget"}}
    invalid = fetch(proc.app_url + "/items/not-a-number")
    assert invalid.status == 422
    docs = fetch(proc.app_url + "/openapi.json").json()
    assert "/items/{item_id}" in docs["paths"]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert proc.proc.stdout is not None
    assert "fastapi lifespan shutdown" in proc.proc.stdout.read()
