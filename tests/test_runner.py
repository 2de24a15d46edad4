"""The composition root as a real process: the shutdown order against the worst case, a
failed start that lingers to be scraped, and signals that escalate."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.serving import CUT_GRACE

from .conftest import LOOPBACK, fetch, fetch_quietly, open_socket
from .metrics_util import scrape_samples

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


# -- a failed startup is seen before the process exits ------------------------------------------


def _linger_run(cli: Any, app: str, state_dir: Path, *extra: str) -> Any:
    proc = cli(
        "run", app, *LOOPBACK, "--startup-timeout", "0.5", *extra,
        env={"SIDECAR_LIFESPAN_STATE_DIR": str(state_dir), "SIDECAR_LIFESPAN_FAILURE_LINGER": "30"},
    )  # fmt: skip
    admin = proc.wait_line(r"admin endpoints on (http://\S+)")
    proc.admin_url = admin.group(1)
    proc.wait_line("so that Prometheus can scrape it")
    return proc


@pytest.mark.parametrize(
    ("app", "reason", "says"),
    [
        ("broken_import:app", "import", "importing module 'broken_import' raised"),
        ("cli_apps:fails_startup", "failed", "cache warmup failed"),
        ("cli_apps:hangs_in_startup", "timeout", "did not complete within 0.5s"),
    ],
)
def test_a_failed_start_lingers_for_the_scrape_then_exits_3(
    cli: Any, tmp_path: Path, app: str, reason: str, says: str
) -> None:
    counts = []
    for _ in range(2):  # a crash loop: the same pod, the next container
        proc = _linger_run(cli, app, tmp_path)
        startup = fetch(proc.admin_url + "/startupz?verbose")
        assert startup.status == 503
        assert says in startup.text
        ready = fetch(proc.admin_url + "/readyz", headers={"Accept": "application/json"})
        assert ready.status == 503
        [check] = [c for c in ready.json()["checks"] if c["name"] == "startup"]
        assert says in check["message"]
        samples = scrape_samples(fetch(proc.admin_url + "/metrics").text)
        counts.append(samples[("sidecar_lifespan_startup_failures_total", (("reason", reason),))])
        assert (
            "sidecar_lifespan_last_startup_failure_timestamp_seconds",
            (("reason", reason),),
        ) in samples
        assert samples[("sidecar_lifecycle_phase", (("phase", "failed"),))] == 1
        assert samples[("sidecar_ready", ())] == 0
        proc.signal()  # the kubelet gives up on the pod: the linger ends at once
        assert proc.wait() == 3, proc.log()
    assert counts == [1, 2]  # counting across the restart, from the state directory


def test_without_a_linger_a_failed_start_exits_at_once(cli: Any) -> None:
    proc = cli("run", "cli_apps:fails_startup", *LOOPBACK)
    assert proc.wait() == 3
    assert "so that Prometheus can scrape it" not in proc.log()


def test_a_corrupt_state_file_is_a_warning(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "startup.json").write_text("{garbage")
    proc = cli(
        "run", "cli_apps:slow_startup", *LOOPBACK,
        env={"SIDECAR_LIFESPAN_STATE_DIR": str(tmp_path)},
    )  # fmt: skip
    proc.wait_serving()
    assert "which is not a startup record" in proc.log()
    proc.signal()
    assert proc.wait() == 0


# -- signals escalate ---------------------------------------------------------------------------


def test_the_third_signal_exits_at_once_saying_what_it_cut(cli: Any) -> None:
    proc = cli(
        "run", "cli_apps:never_lets_go", *LOOPBACK,
        "--drain-delay", "60", "--graceful-timeout", "60", "--shutdown-timeout", "60",
    )  # fmt: skip
    proc.wait_serving()
    threading.Thread(target=fetch_quietly, args=(proc.app_url + "/hang",), daemon=True).start()
    proc.wait_line("hang began")
    proc.signal(signal.SIGTERM)
    proc.wait_line("draining: serving for 60.0s more")
    proc.signal(signal.SIGTERM)  # skips what is left: the request is cut, lifespan runs
    proc.wait_line("second shutdown request: skipping what is left of the drain")
    proc.wait_line("cutting 1 request")
    proc.wait_line("lifespan shutdown began")  # and it would take its 60 s
    began = time.monotonic()
    proc.signal(signal.SIGINT)
    assert proc.wait() == 128 + signal.SIGINT
    assert time.monotonic() - began < 30  # not the 60 s of the lifespan shutdown timeout
    line = proc.wait_line("third signal").string
    assert "third signal (SIGINT): exiting at once with code 130, in phase stopping" in line
    assert "0 request(s) in flight, 0 WebSocket(s), lifespan shutdown in progress" in line
