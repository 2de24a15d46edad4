"""The benchmark suite: the sidecar against uvicorn, on the same apps, in the same run.

Each server is pinned to CPU 0 and the load generator (wrk) and this script to CPU 1.
Servers take turns within each round (interleaved), so drift of the machine affects
them alike; the figures that count are the ratios sidecar/uvicorn measured in one run.

    python bench/compare.py                  # the whole suite, about 10 minutes
    python bench/compare.py --quick          # shorter runs, one round: a smoke test
    python bench/compare.py --update-readme  # also rewrite the table in bench/README.md

Throughput scenarios (wrk, keep-alive; req/s and p50/p99 latency):

- ``plain``, ``json``: raw ASGI, 13 bytes of text and a small JSON object, 64 connections
- ``post-4k``: raw ASGI echo of a 4 KiB POST body
- ``stream-1m``: raw ASGI, a 1 MiB response in 64 KiB chunks
- ``fastapi-json``: a FastAPI endpoint returning what lifespan startup stored
- ``plain-512``: ``plain`` with 512 connections

Also measured: process start to ready (the sidecar's ``/readyz`` 200, uvicorn's first
200), idle and peak RSS, admin probe latency while the app port is saturated and while
the app's loop is blocked by CPU work, ``/metrics`` scrape time, and the cost of the
request metrics (the sidecar with ``metrics.requests`` off, same scenarios).

Results go to ``bench/results/`` as JSON and Markdown. It needs ``wrk`` and ``taskset``
(``apt-get install -y wrk util-linux``) and the ``bench`` extra (``pip install -e
'.[bench]'``); it installs the Debian packages itself when it runs as root.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
SERVER_CPU = "0"
CLIENT_CPU = "1"


@dataclass(frozen=True)
class Scenario:
    name: str
    app: str  # "raw" or "fastapi"
    path: str
    connections: int = 64
    script: str | None = None  # a wrk Lua script (POST bodies)
    title: str = ""


POST_SCRIPT = """
wrk.method = "POST"
wrk.body = string.rep("x", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
"""

SCENARIOS = [
    Scenario("plain", "raw", "/plain", title="raw ASGI plain text, 64 connections"),
    Scenario("json", "raw", "/json", title="raw ASGI JSON, 64 connections"),
    Scenario("post-4k", "raw", "/echo", script=POST_SCRIPT, title="raw ASGI POST echo, 4 KiB"),
    Scenario("stream-1m", "raw", "/stream", title="raw ASGI 1 MiB streamed in 64 KiB chunks"),
    Scenario("fastapi-json", "fastapi", "/json", title="FastAPI JSON from lifespan state"),
    Scenario("plain-512", "raw", "/plain", connections=512, title="raw ASGI plain, 512 conns"),
]  # fmt: skip
APPS = {"raw": "bench.apps:app", "fastapi": "bench.fastapi_app:app"}
READY_PATHS = {"raw": "/plain", "fastapi": "/json"}

# Servers: uvicorn, the sidecar, and sidecar variants that differ in one setting, to
# measure what it costs (the metrics variant runs only the scenarios named here).
SIDECAR_VARIANTS = {
    "sidecar": {},
    "sidecar-no-metrics": {"SIDECAR_METRICS_REQUESTS": "false"},
    "sidecar-no-heartbeat": {"SIDECAR_HEALTH_HEARTBEAT_INTERVAL": "0"},
    # 100 times the default rate: an upper bound for what the heartbeat can cost.
    "sidecar-heartbeat-1ms": {"SIDECAR_HEALTH_HEARTBEAT_INTERVAL": "0.001"},
}
VARIANT_SCENARIOS = {"sidecar-no-metrics": ("plain", "json")}
SERVERS = ("uvicorn", *SIDECAR_VARIANTS)


@dataclass
class Sample:
    server: str
    scenario: str
    round: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float


@dataclass
class Results:
    args: dict[str, object]
    machine: dict[str, object]
    samples: list[Sample] = field(default_factory=list)
    startup_ms: dict[str, list[float]] = field(default_factory=dict)
    rss_mb: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    probes: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics_scrape: dict[str, float] = field(default_factory=dict)


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int | None
    started: float
    #: Seconds from process start to ready (set by ``running``).
    ready_s: float = 0.0

    def rss_mb(self, key: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {key} for pid {self.proc.pid}")


def server_command(name: str, app: str, port: int, admin_port: int) -> list[str]:
    if name == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning", "--lifespan", "on",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "sidecar", "run", app, "--host", "127.0.0.1",
        "--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(admin_port),
        "--drain-delay", "0", "--log-level", "warning",
    ]  # fmt: skip


def server_env(name: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **SIDECAR_VARIANTS.get(name, {})}
    # Start as users do: with bytecode caching (some environments turn it off).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextmanager
def running(name: str, app: str) -> Iterator[Server]:
    """Start a server, wait until it is ready, stop it afterwards."""
    port, admin_port = free_port(), free_port()
    command = ["taskset", "-c", SERVER_CPU, *server_command(name, APPS[app], port, admin_port)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=server_env(name))
    server = Server(name, proc, port, None if name == "uvicorn" else admin_port, started)
    try:
        server.ready_s = wait_ready(server, app)
        yield server
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the server is not gone within 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_answering(
    port: int, proc: subprocess.Popen[bytes], path: str = "/plain", timeout: float = 60
) -> None:
    """Poll ``GET path`` until it answers 200; fail if the process exits first."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering")
        try:
            if http_get(port, path, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.005)  # both servers are polled alike; each poll costs them a little
    raise RuntimeError(f"no 200 from {path} within {timeout}s")


def wait_ready(server: Server, app: str = "raw") -> float:
    """Wait until ready (sidecar: ``/readyz`` 200; uvicorn: a 200 from the app).

    Returns seconds since the process started.
    """
    if server.admin_port is not None:
        wait_until_answering(server.admin_port, server.proc, "/readyz")
    else:
        wait_until_answering(server.port, server.proc, READY_PATHS[app])
    return time.perf_counter() - server.started


# -- wrk ----------------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    if match is None:
        raise RuntimeError(f"no {percentile}% latency in wrk output:\n{output}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(port: int, scenario: Scenario, seconds: int, scripts: Path) -> tuple[float, ...]:
    command = [
        "taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{scenario.connections}",
        f"-d{seconds}s", "--latency", "--timeout", "10s",
    ]  # fmt: skip
    if scenario.script is not None:
        script = scripts / f"{scenario.name}.lua"
        script.write_text(scenario.script)
        command += ["-s", str(script)]
    command.append(f"http://127.0.0.1:{port}{scenario.path}")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    return float(match.group(1)), _latency(output, "50"), _latency(output, "99")


# -- admin-port measurements ----------------------------------------------------------------


class Prober(threading.Thread):
    """Probe an admin endpoint on a fresh connection every ``interval`` (as the kubelet)."""

    def __init__(self, port: int, path: str, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.interval = port, path, interval
        self.latencies_ms: list[float] = []
        self.statuses: dict[int, int] = {}
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            began = time.perf_counter()
            try:
                status, _ = http_get(self.port, self.path, timeout=5)
            except OSError:
                self.failures += 1
                continue
            self.latencies_ms.append((time.perf_counter() - began) * 1000)
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def summary(self) -> dict[str, float]:
        values = sorted(self.latencies_ms)
        if not values:
            return {"probes": 0, "failures": self.failures}
        return {
            "probes": len(values),
            "failures": self.failures,
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "max_ms": values[-1],
            **{f"status_{status}": count for status, count in sorted(self.statuses.items())},
        }


def percentile(sorted_values: list[float], pct: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def probe_while(server: Server, path: str, load: threading.Thread) -> dict[str, float]:
    assert server.admin_port is not None
    prober = Prober(server.admin_port, path)
    prober.start()
    load.start()
    load.join()
    prober.stop.set()
    prober.join()
    return prober.summary()


def measure_probes(server: Server, seconds: int, scripts: Path) -> dict[str, dict[str, float]]:
    """Admin probe latency with the app port saturated, then with the app's loop blocked."""
    saturate = threading.Thread(
        target=run_wrk, args=(server.port, SCENARIOS[0], seconds, scripts), daemon=True
    )
    saturated = probe_while(server, "/readyz", saturate)

    deadline = time.perf_counter() + seconds

    def block() -> None:  # back-to-back requests that each hold the loop for 200 ms
        while time.perf_counter() < deadline:
            http_get(server.port, "/block?ms=200", timeout=30)

    blocked = probe_while(server, "/livez", threading.Thread(target=block, daemon=True))
    return {"saturated /readyz": saturated, "loop blocked /livez": blocked}


def measure_scrape(server: Server, count: int = 50) -> dict[str, float]:
    assert server.admin_port is not None
    timings = []
    size = 0
    for _ in range(count):
        began = time.perf_counter()
        status, body = http_get(server.admin_port, "/metrics")
        timings.append((time.perf_counter() - began) * 1000)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        size = len(body)
    timings.sort()
    return {"p50_ms": percentile(timings, 50), "p99_ms": percentile(timings, 99), "bytes": size}


# -- the run ------------------------------------------------------------------------------


def measure_startup(results: Results, servers: list[str], runs: int) -> None:
    for name in servers:
        with running(name, "raw"):  # warm the bytecode cache and the page cache
            pass
    for _ in range(runs):
        for name in servers:
            with running(name, "raw") as server:
                if name != "uvicorn":  # the app port answers too, not only the admin port
                    assert http_get(server.port, "/plain")[0] == 200
                results.startup_ms.setdefault(name, []).append(server.ready_s * 1000)
    for name in servers:
        print(f"startup {name:22} median {statistics.median(results.startup_ms[name]):7.1f} ms")


def run_round(
    results: Results, number: int, servers: list[str], args: argparse.Namespace, scripts: Path
) -> None:
    wanted = [s for s in SCENARIOS if s.name in args.scenarios]
    for app in ("raw", "fastapi"):
        scenarios = [s for s in wanted if s.app == app]
        if not scenarios:
            continue
        for name in servers:
            mine = [s for s in scenarios if s.name in VARIANT_SCENARIOS.get(name, (s.name,))]
            if not mine:
                continue
            with running(name, app) as server:
                http_get(server.port, mine[0].path)
                rss = results.rss_mb.setdefault(f"{name} {app}", {"idle": [], "peak": []})
                rss["idle"].append(server.rss_mb())
                for scenario in mine:
                    run_wrk(server.port, scenario, 1, scripts)  # warm-up
                    rps, p50, p99 = run_wrk(server.port, scenario, args.duration, scripts)
                    results.samples.append(Sample(name, scenario.name, number, rps, p50, p99))
                    print(
                        f"round {number} {name:20} {scenario.name:13} {rps:9.0f} req/s  "
                        f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms",
                        flush=True,
                    )
                rss["peak"].append(server.rss_mb("VmHWM"))
                if name == "sidecar" and app == "raw" and number == 1:
                    results.metrics_scrape = measure_scrape(server)
                    results.probes = measure_probes(server, args.duration, scripts)


# -- reporting ------------------------------------------------------------------------------


def summarize(results: Results, servers: list[str]) -> dict[str, object]:
    table: dict[str, object] = {}
    for scenario in SCENARIOS:
        row: dict[str, object] = {}
        for name in servers:
            mine = [s for s in results.samples if s.server == name and s.scenario == scenario.name]
            if not mine:
                continue
            rates = [s.requests_per_s for s in mine]
            row[name] = {
                "median_rps": statistics.median(rates),
                "min_rps": min(rates),
                "max_rps": max(rates),
                "p50_ms": statistics.median(s.p50_ms for s in mine),
                "p99_ms": statistics.median(s.p99_ms for s in mine),
            }
        if row:
            table[scenario.name] = row
    return table


def _rps(row: dict[str, object], name: str) -> float:
    return float(row[name]["median_rps"])  # type: ignore[index]


def markdown(results: Results, table: dict[str, object], servers: list[str]) -> str:
    base, other = "uvicorn", "sidecar"
    lines = [
        f"| scenario | {base} req/s (p99) | {other} req/s (p99) | ratio |",
        "|---|---|---|---|",
    ]
    titles = {s.name: s.title for s in SCENARIOS}
    for name, row in table.items():
        assert isinstance(row, dict)
        if base not in row or other not in row:
            continue
        b, o = row[base], row[other]
        lines.append(
            f"| {titles[name]} | {b['median_rps']:,.0f} ({b['p99_ms']:.1f} ms) | "
            f"{o['median_rps']:,.0f} ({o['p99_ms']:.1f} ms) | "
            f"**{o['median_rps'] / b['median_rps']:.2f}x** |"
        )
    lines.append("")
    lines.append("| measurement | uvicorn | sidecar |")
    lines.append("|---|---|---|")
    startup = results.startup_ms
    if base in startup and other in startup:
        lines.append(
            f"| process start to ready, median (uvicorn: first 200; sidecar: `/readyz` 200) | "
            f"{statistics.median(startup[base]):.0f} ms | "
            f"{statistics.median(startup[other]):.0f} ms |"
        )
    rss = results.rss_mb
    if f"{base} raw" in rss and f"{other} raw" in rss:
        for kind, label in (("idle", "idle RSS"), ("peak", "peak RSS after the raw scenarios")):
            lines.append(
                f"| {label} | {statistics.median(rss[f'{base} raw'][kind]):.1f} MB | "
                f"{statistics.median(rss[f'{other} raw'][kind]):.1f} MB |"
            )
    for label, probe in results.probes.items():
        if "p99_ms" in probe:
            lines.append(
                f"| admin `{label.split()[-1]}` while {' '.join(label.split()[:-1])}: "
                f"p50 / p99 ({probe['probes']:.0f} probes, {probe['failures']:.0f} failed) | "
                f"no admin port | {probe['p50_ms']:.1f} / {probe['p99_ms']:.1f} ms |"
            )
    if results.metrics_scrape:
        scrape = results.metrics_scrape
        lines.append(
            f"| `/metrics` scrape, p50 / p99 ({scrape['bytes'] / 1024:.0f} KiB) | "
            f"no metrics | {scrape['p50_ms']:.1f} / {scrape['p99_ms']:.1f} ms |"
        )
    for name, row in table.items():
        assert isinstance(row, dict)
        if "sidecar-no-metrics" in row and other in row:
            on, off = _rps(row, other), _rps(row, "sidecar-no-metrics")
            lines.append(
                f"| req/s with request metrics on vs off, `{name}` | | "
                f"{on:,.0f} vs {off:,.0f} (on/off {on / off:.2f}x) |"
            )
    args = results.args
    machine = results.machine
    lines.append("")
    lines.append(
        f"{machine['date']}, {machine['cpus']} cores (server on CPU {SERVER_CPU}, wrk on CPU "
        f"{CLIENT_CPU}), Python {machine['python']}, uvloop, medians of {args['rounds']} "
        f"interleaved rounds of {args['duration']} s (`python bench/compare.py`)."
    )
    return "\n".join(lines)


def update_readme(text: str) -> None:
    content = README.read_text()
    start, end = "<!-- bench:start -->\n", "<!-- bench:end -->"
    if start not in content or end not in content:
        raise RuntimeError(f"{README} has no <!-- bench:start --> ... <!-- bench:end --> block")
    before, rest = content.split(start, 1)
    _, after = rest.split(end, 1)
    README.write_text(before + start + text + "\n" + end + after)


def ensure_tools() -> bool:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk", "util-linux"],
            check=False,
            capture_output=True,
        )
        missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install -y wrk util-linux", file=sys.stderr)
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--startup-runs", type=int, default=7)
    parser.add_argument(
        "--scenarios", nargs="+", choices=[s.name for s in SCENARIOS],
        default=[s.name for s in SCENARIOS],
    )  # fmt: skip
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=SERVERS,
        default=["uvicorn", "sidecar", "sidecar-no-metrics"],
    )
    parser.add_argument("--quick", action="store_true", help="2 s runs, one round")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.startup_runs = 2, 1, 3
    servers: list[str] = args.servers
    if len(servers) < 2 or len(set(servers)) != len(servers):
        parser.error("--servers needs at least two different servers")
    if not ensure_tools():
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two CPUs: one for the server, one for wrk", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {int(CLIENT_CPU)})  # keep this script off the server's CPU

    results = Results(
        args=vars(args),
        machine={
            "date": time.strftime("%Y-%m-%d"),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    )
    with tempfile.TemporaryDirectory() as scripts_dir:
        scripts = Path(scripts_dir)
        measure_startup(results, ["uvicorn", "sidecar"], args.startup_runs)
        for number in range(1, args.rounds + 1):
            run_round(results, number, servers, args, scripts)

    table = summarize(results, servers)
    print()
    for name, row in table.items():
        assert isinstance(row, dict)
        for server, figures in row.items():
            print(
                f"{name:13} {server:20} median {figures['median_rps']:9.0f} req/s "
                f"(min {figures['min_rps']:.0f}, max {figures['max_rps']:.0f}) "
                f"p50 {figures['p50_ms']:.2f} ms p99 {figures['p99_ms']:.2f} ms"
            )
        base = servers[0]
        for server in servers[1:]:
            if base in row and server in row:
                ratio = _rps(row, server) / _rps(row, base)
                print(f"{name:13} ratio {server}/{base} {ratio:.3f}x")
    report = markdown(results, table, servers)
    print()
    print(report)

    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    document = {**asdict(results), "summary": table}
    (RESULTS / f"suite-{stamp}.json").write_text(json.dumps(document, indent=2))
    (RESULTS / f"suite-{stamp}.md").write_text(report + "\n")
    print(f"\nresults written to bench/results/suite-{stamp}.json and .md")
    if args.update_readme:
        update_readme(report)
        print("bench/README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
