"""Checks from the configuration: tcp, http and callable, run by the sidecar."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sidecar import (
    AppLoadError,
    CheckFailed,
)

from .. import apps
from ..conftest import WAIT, LogWatch, fetch
from ..metrics_util import sample

JSON = {"Accept": "application/json"}


def check_document(running: Any, probe: str, name: str) -> dict[str, Any]:
    document = fetch(running.admin(f"/{probe}"), headers=JSON).json()
    return next(c for c in document["checks"] if c["name"] == name)  # type: ignore[no-any-return]


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = {"/ok": 200, "/moved": 302}.get(self.path, 500)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


@pytest.fixture
def http_server() -> Iterator[str]:
    """A plain HTTP server on loopback: /ok 200, /moved 302, anything else 500."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(WAIT)


def test_configured_checks_run_and_report(
    run_sidecar: Any, logs: LogWatch, http_server: str
) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_server(("127.0.0.1", 0)) as gone,
    ):
        up, down = listener.getsockname()[1], gone.getsockname()[1]
        gone.close()  # nothing listens there any more: connections are refused
        fast = {"interval": 0.05, "failure_threshold": 1}
        checks = [
            {"name": "tcp-up", "type": "tcp", "host": "127.0.0.1", "port": up, **fast},
            {"name": "tcp-down", "type": "tcp", "host": "127.0.0.1", "port": down, **fast},
            {"name": "http-up", "type": "http", "url": f"{http_server}/ok", **fast},
            {"name": "http-moved", "type": "http", "url": f"{http_server}/moved", **fast},
            {
                "name": "http-down",
                "type": "http",
                "url": f"{http_server}/x",
                **fast,
                "severity": "warning",
                "tags": ["search"],
            },
            {
                "name": "fn-up",
                "type": "callable",
                "target": "tests.apps:check_passes",
                "probe": "liveness",
            },
            {
                "name": "fn-down",
                "type": "callable",
                "target": "tests.apps:check_fails",
                "probe": "liveness",
                "severity": "warning",
                **fast,
            },
        ]
        running = run_sidecar(apps.lifespan_app(), health__checks=checks)
        for name in ("tcp-up", "http-up", "http-moved", "fn-up"):
            logs.wait_for(rf"health check '{name}' \(\w+\) passes")
        for name in ("tcp-down", "http-down", "fn-down"):
            logs.wait_for(rf"health check '{name}' \(\w+\) failed")
        ready = fetch(running.admin("/readyz?verbose"))
        live = fetch(running.admin("/livez?verbose"))
        source = check_document(running, "readyz", "tcp-up")["details"]["source"]
    assert ready.status == 503  # tcp-down is critical
    lines = ready.text.splitlines()
    assert "[+]tcp-up ok" in lines
    assert any(
        line.startswith(f"[-]tcp-down failed: cannot connect to 127.0.0.1:{down}: ")
        for line in lines
    ), ready.text
    assert "[+]http-up ok" in lines
    assert "[+]http-moved ok" in lines  # 3xx passes, as for the kubelet
    assert (
        f"[-]http-down failed: GET {http_server}/x answered 500 (1 failure in a row) "
        "(severity warning: not counted)"
    ) in lines
    assert fetch(running.admin("/readyz?exclude=tcp-down")).status == 200
    assert live.status == 200  # fn-down is a warning
    assert "[+]fn-up ok" in live.text
    assert "[-]fn-down failed: ConnectionError: replica is 30s behind" in live.text
    assert source == f"config: tcp 127.0.0.1:{up}"


def test_a_configured_check_that_cannot_be_imported_fails_startup(run_sidecar: Any) -> None:
    checks = [{"name": "gone", "type": "callable", "target": "tests.no_such_module:check"}]
    running = run_sidecar(apps.lifespan_app(), wait=False, health__checks=checks)
    error = running.wait_finished()
    assert isinstance(error, AppLoadError)
    assert str(error).startswith(
        "cannot load health check 'gone' (health.checks[0].target) "
        "'tests.no_such_module:check': module 'tests.no_such_module' not found"
    )
    registry = running.sidecar.metrics.registry
    assert sample(registry, "sidecar_lifespan_startup_failures_total", reason="import") == 1


def test_check_failed_gives_the_message_alone(run_sidecar: Any, logs: LogWatch) -> None:
    async def replica_lag() -> None:
        raise CheckFailed("replica is 42s behind")

    app = apps.registers(
        lambda health: health.add_readiness_check(
            "replica", replica_lag, interval=0.05, failure_threshold=1
        )
    )
    running = run_sidecar(app)
    logs.wait_for(r"health check 'replica' \(readiness\) failed")
    verbose = fetch(running.admin("/readyz?verbose")).text
    assert "[-]replica failed: replica is 42s behind (1 failure in a row)" in verbose


def test_an_http_check_never_shows_the_password_in_its_url(
    run_sidecar: Any, logs: LogWatch, http_server: str
) -> None:
    # The probes and the status page are open to whoever reaches the admin port.
    url = http_server.replace("http://", "http://monitor:s3cret-pass@") + "/x"
    checks = [{"name": "search", "type": "http", "url": url, "interval": 0.05}]
    running = run_sidecar(apps.lifespan_app(), health__checks=checks)
    logs.wait_for(r"health check 'search' \(readiness\) failed")
    shown = http_server.replace("http://", "http://monitor:<redacted>@") + "/x"
    verbose = fetch(running.admin("/readyz?verbose")).text
    line = next(line for line in verbose.splitlines() if line.startswith("[-]search failed: "))
    assert line.endswith(f"GET {shown} answered 500"), line
    document = check_document(running, "readyz", "search")
    assert document["details"]["source"] == f"config: http {shown}"
    status = fetch(running.admin("/"), headers=JSON).text
    assert "s3cret-pass" not in verbose + str(document) + status
    assert "s3cret-pass" not in "".join(logs.messages(""))
