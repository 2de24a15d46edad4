"""Several workers in one pod, as real processes: serving, replacing, recycling, stopping."""

from __future__ import annotations

import http.client
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ..conftest import LOOPBACK, WAIT, CliProcess, Reply, fetch, fetch_quietly
from ..metrics_util import scrape_samples

READY = r"INFO\s+sidecar: phase starting -> ready"  # the supervisor's, not a worker's


def start_pod(cli: Any, *flags: str, workers: int = 2, env: dict[str, str] | None = None) -> Any:
    proc: CliProcess = cli(
        "run", "cli_apps:workers_app", *LOOPBACK, "--workers", str(workers),
        "--drain-delay", "0", *flags, env=env,
    )  # fmt: skip
    admin = proc.wait_line(r"admin endpoints on (http://\S+)")
    app = proc.wait_line(r"starting \d+ workers on ([\d.]+):(\d+)")
    proc.admin_url = admin.group(1)
    proc.app_url = f"http://{app.group(1)}:{app.group(2)}"
    proc.wait_line(READY)
    return proc


def _workers(proc: Any) -> list[dict[str, Any]]:
    """The worker lines of /readyz, as JSON: slot, pid, phase, restarts..."""
    reply = fetch(proc.admin_url + "/readyz", headers={"Accept": "application/json"})
    return [
        check["details"] for check in reply.json()["checks"] if check["name"].startswith("worker-")
    ]


def _metric(proc: Any, name: str, **labels: str) -> float:
    samples = scrape_samples(fetch(proc.admin_url + "/metrics").text)
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _wait(what: str, condition: Any, timeout: float = WAIT) -> Any:
    """Poll ``condition`` (HTTP reads of the pod) until it holds; one upper bound."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: never happened")
        time.sleep(0.05)


class Load:
    """Clients sending requests on new connections until stopped; every outcome kept."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self._url = url
        self._stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.pids: set[int] = set()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply: Reply = fetch(self._url, timeout=10)
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                if reply.status == 200:
                    self.ok += 1
                    self.pids.add(int(reply.body))
                else:
                    self.failures.append(f"status {reply.status}")

    def served(self) -> int:
        with self._lock:
            return self.ok


@pytest.fixture
def pod(cli: Any) -> Iterator[Any]:
    proc = start_pod(cli)
    yield proc
    proc.kill()


def test_every_worker_serves_and_runs_its_own_lifespan(cli: Any) -> None:
    proc = start_pod(cli, workers=3)
    workers = _workers(proc)
    pids = {worker["pid"] for worker in workers}
    assert len(pids) == 3
    assert proc.proc.pid not in pids  # the supervisor serves no request
    for pid in pids:
        proc.wait_line(f"lifespan startup in pid {pid}")
    # A worker whose loop is busy accepts nothing: the others answer meanwhile.
    answered: set[int] = set()
    blocker = threading.Thread(
        target=lambda: answered.add(int(fetch(proc.app_url + "/spin?s=1").body)), daemon=True
    )
    blocker.start()
    proc.wait_line("spinning in pid")
    for _ in range(20):
        answered.add(int(fetch(proc.app_url + "/pid").body))
    blocker.join(WAIT)
    assert len(answered) >= 2
    assert answered <= pids
    proc.signal()
    assert proc.wait() == 0
    for pid in pids:
        proc.wait_line(f"lifespan shutdown in pid {pid}")
    assert proc.wait_line(r"INFO\s+sidecar: phase stopping -> stopped")


def test_a_killed_worker_is_replaced_and_only_its_requests_fail(cli: Any) -> None:
    proc = start_pod(cli, "--min-ready-workers", "1")
    before = {w["slot"]: w["pid"] for w in _workers(proc)}
    with Load(proc.app_url + "/slow?ms=20") as load:
        _wait("traffic", lambda: load.served() > 20)
        served_before = _metric(
            proc, "sidecar_http_requests_total", method="GET", route="unmatched", code="200"
        )
        os.kill(before[0], signal.SIGKILL)
        _wait(
            "the replacement",
            lambda: _workers(proc)[0]["pid"] not in (before[0],) and _workers(proc)[0]["ready"],
        )
        # One worker stayed ready all along: min_ready_workers 1 keeps the pod ready.
        assert fetch(proc.admin_url + "/readyz").status == 200
        _wait("more traffic", lambda: load.served() > 100)
    assert len(load.failures) <= 4, load.failures  # at most one in flight per client
    assert _metric(proc, "sidecar_worker_restarts_total", reason="crash") == 1
    served_after = _metric(
        proc, "sidecar_http_requests_total", method="GET", route="unmatched", code="200"
    )
    assert served_after >= served_before  # the counter never goes backwards
    proc.wait_line(r"worker 0 \(pid \d+\) exited with signal SIGKILL; replacing it")
    proc.signal()
    assert proc.wait() == 0


def test_a_worker_stuck_in_a_cpu_loop_is_dumped_and_replaced(cli: Any) -> None:
    env = {"SIDECAR_HEALTH_LIVE_MAX_LOOP_LAG": "2", "SIDECAR_HEALTH_READY_MAX_LOOP_LAG": "1"}
    proc = start_pod(cli, env=env)
    # Its connection is cut when the worker is killed.
    threading.Thread(target=fetch_quietly, args=(proc.app_url + "/spin?s=60",), daemon=True).start()
    spinning = int(proc.wait_line(r"spinning in pid (\d+)").group(1))
    proc.wait_line(rf"worker \d \(pid {spinning}\) is stuck")
    # Its stack was logged before the kill: the line that blocks.
    stack = proc.wait_line(r"the app thread is at:")
    assert "worker" in stack.string
    proc.wait_line("in workers_app")
    _wait(
        "a new worker",
        lambda: (
            spinning not in {w["pid"] for w in _workers(proc)}
            and all(w["ready"] for w in _workers(proc))
        ),
    )
    assert _metric(proc, "sidecar_worker_restarts_total", reason="stuck") == 1
    proc.signal()
    assert proc.wait() == 0


def test_recycling_under_steady_load_fails_nothing(cli: Any) -> None:
    proc = start_pod(cli, "--max-requests", "40", "--max-requests-jitter", "10")
    with Load(proc.app_url + "/slow?ms=5") as load:
        _wait(
            "two recycled workers",
            lambda: _metric(proc, "sidecar_worker_restarts_total", reason="max_requests") >= 2,
            timeout=120,
        )
    assert load.failures == []
    assert len(load.pids) >= 3  # more processes served than there are slots
    proc.signal()
    assert proc.wait() == 0


def test_a_worker_whose_app_fails_to_start_ends_the_pod_with_3(cli: Any) -> None:
    proc: CliProcess = cli("run", "cli_apps:fails_startup", *LOOPBACK, "--workers", "2")
    assert proc.wait() == 3
    proc.wait_line("cache warmup failed")
    proc.wait_line(r"CRITICAL sidecar: the app failed to start \(failed\)")


def test_ctrl_c_reaches_the_process_group_and_counts_once(cli: Any) -> None:
    proc = start_pod(cli, "--drain-delay", "0.5")
    os.killpg(os.getpgid(proc.proc.pid), signal.SIGINT) if False else None
    # The whole group, as a terminal's Ctrl-C: the supervisor and every worker.
    for pid in [proc.proc.pid, *(w["pid"] for w in _workers(proc))]:
        os.kill(pid, signal.SIGINT)
    assert proc.wait() == 0
    assert len(re.findall(r"sidecar: received SIGINT", proc.log())) == 1
    assert "second shutdown request" not in proc.log()


def test_probes_and_metrics_answer_for_every_worker(pod: Any) -> None:
    for _ in range(10):
        assert fetch(pod.app_url + "/pid").status == 200
    verbose = fetch(pod.admin_url + "/readyz?verbose").text
    assert "[+]workers ok" in verbose
    assert "[+]worker-0 ok" in verbose
    assert "[+]worker-1 ok" in verbose
    for worker in _workers(pod):
        assert set(worker) >= {"slot", "pid", "phase", "ready", "loop_lag_s", "restarts"}
        assert worker["phase"] == "ready"
    assert fetch(pod.admin_url + "/startupz").status == 200
    assert fetch(pod.admin_url + "/livez").status == 200
    # The sum over the workers, read when they last reported (twice a second).
    _wait(
        "the requests in the sum",
        lambda: (
            _metric(pod, "sidecar_http_requests_total", method="GET", route="unmatched", code="200")
            >= 10
        ),
    )
    assert _metric(pod, "sidecar_workers_ready") == 2
    assert _metric(pod, "sidecar_workers_alive") == 2
    assert _metric(pod, "sidecar_ready") == 1
    for slot in ("0", "1"):
        assert _metric(pod, "sidecar_worker_phase", worker=slot, phase="ready") == 1
        assert _metric(pod, "sidecar_worker_resident_memory_bytes", worker=slot) > 10_000_000
    # The shipped alerts and dashboard read series a pod with workers exports too.
    text = fetch(pod.admin_url + "/metrics").text
    for name in ("sidecar_event_loop_longest_stall_seconds", "sidecar_lifecycle_phase",
                 "sidecar_http_request_duration_seconds_bucket",
                 "sidecar_lifespan_startup_failures_total",
                 "sidecar_http_requests_aborted_total"):  # fmt: skip
        assert name in text, name


def test_a_stop_with_workers_keeps_the_single_process_bound(cli: Any) -> None:
    proc = start_pod(cli, "--graceful-timeout", "1", "--shutdown-timeout", "1")
    threading.Thread(
        target=fetch_quietly, args=(proc.app_url + "/slow?ms=600000",), daemon=True
    ).start()
    _wait("the request in flight", lambda: _metric(proc, "sidecar_http_requests_in_flight") == 1)
    began = time.monotonic()
    proc.signal()
    code = proc.wait()
    elapsed = time.monotonic() - began
    # drain 0 + graceful 1 + lifespan shutdown 1 (the app answers at once) + the cut's
    # second, plus a margin for the processes to exit.
    assert elapsed < 0 + 1 + 1 + 1 + 2, proc.log()
    assert code == 0, proc.log()
    proc.wait_line("cutting 1 request")


def test_the_status_page_shows_every_worker(pod: Any) -> None:
    # The supervisor's page: its own lifecycle, the probes over all workers, one row per
    # worker (as its probe line's details), and the traffic summed over the workers.
    for _ in range(10):
        assert fetch(pod.app_url + "/pid").status == 200
    rows = _workers(pod)
    document = _wait(
        "the requests in the status",
        lambda: (
            (reply := fetch(pod.admin_url + "/", headers={"Accept": "application/json"}).json())
            and (reply["traffic"]["requests_total"] or 0) >= 10
            and reply
        ),
    )
    assert document["sidecar"]["pid"] == pod.proc.pid
    assert document["phase"] == "ready"
    assert [(w["slot"], w["pid"], w["phase"]) for w in document["workers"]] == [
        (w["slot"], w["pid"], w["phase"]) for w in rows
    ]
    assert {w["slot"] for w in document["workers"]} == {0, 1}
    assert all(w["ready"] and w["rss_bytes"] > 10_000_000 for w in document["workers"])
    traffic = document["traffic"]
    assert traffic["serving"] is True
    assert traffic["responses"]["2xx"] == traffic["requests_total"]
    names = [c["name"] for c in document["probes"]["readiness"]["checks"]]
    assert names == [c["name"] for c in fetch(
        pod.admin_url + "/readyz", headers={"Accept": "application/json"}
    ).json()["checks"]]  # fmt: skip
    assert {"workers", "worker-0", "worker-1"} <= set(names)
    # No checks or event loop of its own: those are the workers'.
    assert document["event_loop"]["monitored"] is False
    html = fetch(pod.admin_url + "/").text
    table = html[html.index('<section id="workers"') :]
    table = table[: table.index("</section>")]
    for worker in document["workers"]:
        assert f">{worker['pid']}<" in table
    assert table.count("<tr>") == 3  # the heading and one row per worker
