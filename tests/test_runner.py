"""The composition root's shutdown order, run against the worst case as a real process."""

from __future__ import annotations

import base64
import os
import threading
import time
from typing import Any

from sidecar.serving import CUT_GRACE

from .conftest import LOOPBACK, fetch_quietly, open_socket

DRAIN_DELAY, GRACEFUL_TIMEOUT, SHUTDOWN_TIMEOUT = 1.0, 2.0, 2.0
# Process exit and scheduling on a loaded machine; the bound itself is the sum of the
# configured budgets plus the cut's grace.
MARGIN = 1.0


def _websocket_that_never_answers(url: str) -> Any:
    """Open a WebSocket and then neither read nor answer anything (a peer gone silent)."""
    sock = open_socket(url)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_a_stop_fits_its_budget_however_stuck_everything_is(cli: Any) -> None:
    proc = cli(
        "run",
        "cli_apps:never_lets_go",
        *LOOPBACK,
        "--drain-delay",
        str(DRAIN_DELAY),
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT),
        "--shutdown-timeout",
        str(SHUTDOWN_TIMEOUT),
    )
    proc.wait_serving()
    clients = [
        threading.Thread(target=fetch_quietly, args=(proc.app_url + path,), daemon=True)
        for path in ("/hang", "/hang", "/hang", "/stream")
    ]
    for client in clients:
        client.start()
    websocket = _websocket_that_never_answers(proc.app_url)
    proc.wait_line("hang began", count=3)
    proc.wait_line("stream began")
    proc.wait_line("websocket accepted")

    began = time.monotonic()
    proc.signal()
    code = proc.wait()
    elapsed = time.monotonic() - began
    websocket.close()

    budget = DRAIN_DELAY + GRACEFUL_TIMEOUT + SHUTDOWN_TIMEOUT + CUT_GRACE
    assert code == 0, proc.log()
    assert elapsed <= budget + MARGIN, f"stopped after {elapsed:.2f}s:\n{proc.log()}"
    log = proc.log()
    assert "cutting 4 request(s) still running at the graceful deadline" in log
    assert "lifespan shutdown began" in log
    assert "lifespan shutdown did not complete within 2s" in log
    assert log.index("cutting 4 request(s)") < log.index("lifespan shutdown began")
