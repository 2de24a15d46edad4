"""Throughput of the sidecar against uvicorn on the same ASGI app, in the same run.

Each server is pinned to CPU 0 and wrk to CPU 1; the servers take turns (interleaved
rounds), so drift of the machine affects both alike. Absolute numbers move between runs
on shared machines; the ratio measured in one run is the figure that counts.

    python bench/compare.py [--duration 10] [--rounds 3] [--connections 64]

``--servers`` picks what to compare; ratios are against the first one. Besides
``uvicorn`` and ``sidecar`` there are sidecar variants that differ only in the
event-loop heartbeat, to measure what it costs:

    python bench/compare.py --servers sidecar-no-heartbeat sidecar sidecar-heartbeat-1ms
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass
class Sample:
    server: str
    path: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_answering(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(12).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not answer in time")


# Sidecar variants: the same command with a different heartbeat (default every 0.1 s).
VARIANTS = {
    "sidecar": {},
    "sidecar-no-heartbeat": {"SIDECAR_HEALTH_HEARTBEAT_INTERVAL": "0"},
    # 100 times the default rate: an upper bound for what the heartbeat can cost.
    "sidecar-heartbeat-1ms": {"SIDECAR_HEALTH_HEARTBEAT_INTERVAL": "0.001"},
}
SERVERS = ("uvicorn", *VARIANTS)


def server_command(name: str, port: int) -> list[str]:
    if name == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", "bench.apps:app", "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "sidecar", "run", "bench.apps:app", "--host", "127.0.0.1",
        "--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(free_port()),
        "--drain-delay", "0", "--log-level", "warning",
    ]  # fmt: skip


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    if match is None:
        raise RuntimeError(f"no {percentile}% latency in wrk output:\n{output}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(port: int, path: str, duration: float, connections: int) -> tuple[float, float, float]:
    seconds = max(1, round(duration))  # wrk takes whole seconds only
    command = [
        "taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
        f"http://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    return float(match.group(1)), _latency(output, "50"), _latency(output, "99")


def measure(name: str, paths: list[str], args: argparse.Namespace) -> list[Sample]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **VARIANTS.get(name, {})}
    command = ["taskset", "-c", "0", *server_command(name, port)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        wait_until_answering(port, proc)
        samples = []
        for path in paths:
            run_wrk(port, path, 1, args.connections)  # warm-up
            rps, p50, p99 = run_wrk(port, path, args.duration, args.connections)
            samples.append(Sample(name, path, rps, p50, p99))
        return samples
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--paths", nargs="+", default=["/plain", "/json"])
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=["uvicorn", "sidecar"])
    args = parser.parse_args()
    servers: list[str] = args.servers
    if len(servers) < 2 or len(set(servers)) != len(servers):
        parser.error("--servers needs at least two different servers")
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is required: apt-get install -y wrk util-linux", file=sys.stderr)
            return 2

    width = max(len(name) for name in servers) + 1
    samples: list[Sample] = []
    for round_number in range(1, args.rounds + 1):
        for name in servers:
            got = measure(name, args.paths, args)
            samples.extend(got)
            for s in got:
                print(
                    f"round {round_number} {name:{width}} {s.path:7} "
                    f"{s.requests_per_s:9.0f} req/s  "
                    f"p50 {s.p50_ms:6.2f} ms  p99 {s.p99_ms:6.2f} ms",
                    flush=True,
                )

    base = servers[0]
    print(f"\n{'path':8}{'server':{width}}{'median req/s':>13}{'min':>9}{'max':>9}{'p99 ms':>9}")
    summary = {}
    for path in args.paths:
        medians = {}
        for name in servers:
            mine = [s for s in samples if s.server == name and s.path == path]
            rates = [s.requests_per_s for s in mine]
            medians[name] = statistics.median(rates)
            p99 = statistics.median(s.p99_ms for s in mine)
            print(
                f"{path:8}{name:{width}}{medians[name]:13.0f}{min(rates):9.0f}"
                f"{max(rates):9.0f}{p99:9.2f}"
            )
            summary[f"{path} {name}"] = {"median_rps": medians[name], "p99_ms": p99}
        for name in servers[1:]:
            ratio = medians[name] / medians[base]
            summary[f"{path} ratio {name}/{base}"] = {"ratio": ratio}
            print(f"{path:8}ratio {name}/{base}: {ratio:.3f}x")
        print()

    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"compare-{stamp}.json"
    document = {"args": vars(args), "samples": [asdict(s) for s in samples], "summary": summary}
    out.write_text(json.dumps(document, indent=2))
    print(f"results written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
