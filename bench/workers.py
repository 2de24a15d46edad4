"""Several workers per pod: the sidecar against uvicorn, gunicorn and granian, in one run.

    python bench/workers.py               # 3 interleaved rounds of 10 s per server
    python bench/workers.py --quick       # 1 round of 3 s: a smoke test

The endpoint spends 0.5 ms of CPU per request in the app (``/block?ms=0.5`` of
``bench.apps``), so the servers' own cost matters less than how they spread the app's
work over the cores: what workers are for. Each server runs with 1 and 2 workers:

- ``sidecar`` (``--workers N``; 1 is the single process, no supervisor) and
  ``sidecar-supervised`` (the supervisor with one worker: what the supervisor costs);
- ``uvicorn --workers N`` (httptools, uvloop);
- ``gunicorn -k uvicorn.workers.UvicornWorker -w N``;
- ``granian --interface asgi --workers N``.

This machine has two cores and the load generator needs one of them too: wrk runs with
two threads on both cores, unpinned, as do the servers, and the app's 0.5 ms per request
keeps the server side the larger share (wrk spends a few microseconds per request). So
absolute figures undercount what two dedicated cores give; the ratios between servers,
measured alike in the same run, are what counts.

Also measured: the total memory of each server's processes after the load (resident and
proportional set size: RSS counts pages shared between processes once per process, PSS
splits them), and the sidecar's admin probe latency while every worker is saturated, in
a run of its own (100 probes a second, far more than a kubelet sends, cost the supervisor
CPU that would otherwise show in the throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare import (
    Prober,
    free_port,
    stop_server,
    wait_until_answering,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
APP = "bench.apps:app"
PATH = "/block?ms=0.5"
CONNECTIONS = 64

SERVERS = ("sidecar", "sidecar-supervised", "uvicorn", "gunicorn", "granian")
# The supervisor with one worker: only for the overhead figure.
ONLY_ONE = ("sidecar-supervised",)

# Runs the supervisor with a single worker (server.workers 1 is one process otherwise).
_SUPERVISED = (
    "import sys; from sidecar.config import load_config; "
    "from sidecar.workers.supervisor import run_supervisor; "
    "run_supervisor(load_config(overrides=dict(a.split('=', 1) for a in sys.argv[1:])))"
)


def command(name: str, workers: int, port: int, admin: int) -> list[str]:
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if name == "sidecar":
        return [
            sys.executable, "-m", "sidecar", "run", APP, *host, "--admin-host", "127.0.0.1",
            "--admin-port", str(admin), "--workers", str(workers), "--drain-delay", "0",
            "--log-level", "warning",
        ]  # fmt: skip
    if name == "sidecar-supervised":
        return [
            sys.executable, "-c", _SUPERVISED, f"app.target={APP}", "server.host=127.0.0.1",
            f"server.port={port}", "admin.host=127.0.0.1", f"admin.port={admin}",
            "shutdown.drain_delay=0", "logging.level=warning",
        ]  # fmt: skip
    if name == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", APP, *host, "--workers", str(workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning", "--lifespan", "on",
        ]  # fmt: skip
    if name == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", APP, "-k", "uvicorn.workers.UvicornWorker",
            "-w", str(workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning",
        ]  # fmt: skip
    if name == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "asgi", APP, *host,
            "--workers", str(workers), "--log-level", "warning", "--no-ws",
        ]  # fmt: skip
    raise ValueError(name)


@dataclass
class Sample:
    server: str
    workers: int
    round: int
    requests_per_s: float
    p99_ms: float
    rss_mb: float
    pss_mb: float


@dataclass
class Results:
    args: dict[str, object]
    samples: list[Sample] = field(default_factory=list)
    probes: dict[str, float] = field(default_factory=dict)
    #: sidecar x2 while its admin port answers 100 probes a second.
    probed_rates: list[float] = field(default_factory=list)


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found, queue = [pid], [pid]
    while queue:
        parent = queue.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            queue.append(child)
    return found


def memory_mb(pid: int) -> tuple[float, float]:
    """Total resident and proportional set size of ``pid``'s process tree, in MB."""
    rss = pss = 0
    for each in _tree(pid):
        try:
            text = Path(f"/proc/{each}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024


@contextmanager
def running(name: str, workers: int) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    port, admin = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.Popen(command(name, workers, port, admin), cwd=ROOT, env=env)
    try:
        if name.startswith("sidecar"):
            wait_until_answering(admin, proc, "/readyz")
        else:
            wait_until_answering(port, proc, PATH)
            # Multi-process servers start their workers one by one: let them all answer.
            for _ in range(20 * workers):
                wait_until_answering(port, proc, PATH)
        yield proc, port, admin
    finally:
        stop_server(proc)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(port: int, seconds: int) -> tuple[float, float]:
    output = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "10s",
            f"http://127.0.0.1:{port}{PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    if rate is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    return float(rate.group(1)), float(p99.group(1)) * _UNITS[p99.group(2)]


def measure(args: argparse.Namespace) -> Results:
    results = Results(args=vars(args))
    plan = [
        (name, workers)
        for workers in (1, 2)
        for name in SERVERS
        if not (name in ONLY_ONE and workers != 1)
    ]
    for round_ in range(1, args.rounds + 1):
        for name, workers in plan:  # interleaved: drift affects every server alike
            with running(name, workers) as (proc, port, admin):
                wrk(port, 1)  # warm up
                rate, p99 = wrk(port, args.duration)
                rss, pss = memory_mb(proc.pid)
                if name == "sidecar" and workers == 2:
                    # The probe latency under the same load, in a run of its own: 100
                    # probes a second (the kubelet sends one every few seconds) cost
                    # the supervisor CPU the throughput figure should not pay for.
                    prober = Prober(admin, "/readyz")
                    prober.start()
                    results.probed_rates.append(wrk(port, args.duration)[0])
                    prober.stop.set()
                    prober.join()
                    results.probes = {k: float(v) for k, v in prober.summary().items()}
            sample = Sample(name, workers, round_, rate, p99, rss, pss)
            results.samples.append(sample)
            print(
                f"round {round_} {name} x{workers}: {rate:,.0f} req/s, p99 {p99:.1f} ms, "
                f"RSS {rss:.1f} MB, PSS {pss:.1f} MB",
                flush=True,
            )
    return results


def summarize(results: Results) -> dict[tuple[str, int], dict[str, float]]:
    table: dict[tuple[str, int], dict[str, float]] = {}
    for sample in results.samples:
        table.setdefault((sample.server, sample.workers), {})
    for key in table:
        mine = [s for s in results.samples if (s.server, s.workers) == key]
        table[key] = {
            "rate": statistics.median(s.requests_per_s for s in mine),
            "p99": statistics.median(s.p99_ms for s in mine),
            "rss": statistics.median(s.rss_mb for s in mine),
            "pss": statistics.median(s.pss_mb for s in mine),
        }
    return table


def markdown(results: Results) -> str:
    table = summarize(results)
    lines = [
        f"CPU-bound endpoint (0.5 ms of CPU per request), wrk -t2 -c{CONNECTIONS}, "
        f"{results.args['rounds']} interleaved round(s) of {results.args['duration']} s, "
        "medians; 2 cores shared with the load generator.",
        "",
        "| server | workers | req/s | p99 ms | RSS MB | PSS MB | vs uvicorn, same workers |",
        "|---|---|---|---|---|---|---|",
    ]
    for (server, workers), row in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        uvicorn = table.get(("uvicorn", workers))
        ratio = f"{row['rate'] / uvicorn['rate']:.2f}x" if uvicorn else ""
        lines.append(
            f"| {server} | {workers} | {row['rate']:,.0f} | {row['p99']:.1f} | "
            f"{row['rss']:.1f} | {row['pss']:.1f} | {ratio} |"
        )
    one, two = table.get(("sidecar", 1)), table.get(("sidecar", 2))
    supervised = table.get(("sidecar-supervised", 1))
    uv2 = table.get(("uvicorn", 2))
    lines.append("")
    if one and two:
        lines.append(f"- sidecar 2 workers / 1 worker: **{two['rate'] / one['rate']:.2f}x** "
                     "(target >= 1.6x)")  # fmt: skip
    if two and uv2:
        against = two["rate"] / uv2["rate"]
        lines.append(
            f"- sidecar 2 workers / uvicorn --workers 2: **{against:.2f}x** (target >= 1.0x)"
        )
        lines.append(
            f"- memory, 2 workers: sidecar {two['rss']:.1f} MB RSS ({two['pss']:.1f} MB PSS), "
            f"uvicorn {uv2['rss']:.1f} MB RSS ({uv2['pss']:.1f} MB PSS): "
            f"{two['rss'] - uv2['rss']:+.1f} MB RSS (target <= +15 MB)"
        )
    if one and supervised:
        lines.append(
            f"- the supervisor's cost (one worker behind it vs the single process): "
            f"{supervised['rate'] / one['rate']:.2f}x the throughput, "
            f"{supervised['rss'] - one['rss']:+.1f} MB RSS"
        )
    if results.probes:
        probes = results.probes
        p50, p99, worst = (probes.get(k, 0.0) for k in ("p50_ms", "p99_ms", "max_ms"))
        lines.append(
            f"- admin `/readyz` while both workers are saturated: p50 {p50:.1f} ms, "
            f"p99 **{p99:.1f} ms** (target < 10 ms), max {worst:.1f} ms, "
            f"{int(probes.get('failures', 0))} failures"
        )
        if results.probed_rates and two:
            probed = statistics.median(results.probed_rates)
            lines.append(
                f"- sidecar 2 workers while probed 100 times a second (a separate run): "
                f"{probed:,.0f} req/s, {probed / two['rate']:.2f}x the unprobed rate"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 3
    results = measure(args)
    report = markdown(results)
    print(report)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.results / f"workers-{stamp}.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "samples": [asdict(s) for s in results.samples],
                "probes": results.probes,
                "probed_rates": results.probed_rates,
            },
            indent=2,
        )
    )
    (args.results / f"workers-{stamp}.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
