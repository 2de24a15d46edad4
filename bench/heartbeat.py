"""What the event-loop heartbeat costs, measured in CPU time rather than requests/s.

wrk's requests/s move by +-30% between runs on shared machines, far more than the
heartbeat could cost, so this measures the cost itself:

1. Per heartbeat: ``LoopMonitor``'s heartbeat runs back to back on a real event loop
   (uvloop and asyncio) and the CPU time per beat is taken. Each beat here pays for a
   whole loop iteration of its own; on a loaded loop a due timer rides along with the
   iteration that serves requests, so this is an upper bound.
2. Idle, per second: an idle ``sidecar run`` with the heartbeat off, at the default
   0.1 s and at 1 ms; CPU time (user + system, from /proc) over a window after startup.
   Idle, the only work is the monitoring (the heartbeat on the app loop, the watcher on
   the admin thread), so this is its whole cost, wake-ups included.
3. Loaded, per request: the same three servers pinned to CPU 0 under ``wrk`` on CPU 1,
   interleaved; the server's CPU time divided by the requests it answered. Other load
   on the machine moves this less than requests/s, but it still moves (caches, CPU
   contention): on a shared machine it shows only that the heartbeat is lost in noise.

    python bench/heartbeat.py [--beats 200000] [--window 10] [--rounds 3] [--duration 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare import free_port, wait_until_answering  # noqa: E402
from sidecar.config import HealthConfig  # noqa: E402
from sidecar.health import LoopMonitor  # noqa: E402
from sidecar.metrics import LoopLagStats  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


class _Counting(LoopLagStats):
    """Lag stats that resolve ``done`` at the ``beats``-th heartbeat."""

    def __init__(self, beats: int, done: asyncio.Future[None]) -> None:
        super().__init__()
        self._left = beats
        self._done = done

    def observe(self, seconds: float) -> None:
        super().observe(seconds)
        self._left -= 1
        if self._left == 0:
            self._done.set_result(None)


def per_beat(new_loop: Callable[[], asyncio.AbstractEventLoop], beats: int) -> float:
    """CPU seconds per heartbeat, heartbeats back to back on a fresh loop."""
    loop = new_loop()

    async def run() -> float:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A tiny interval makes every heartbeat due at the next loop iteration.
        monitor = LoopMonitor(HealthConfig(heartbeat_interval=1e-9), _Counting(beats, done))
        began = time.process_time()
        monitor.start(asyncio.get_running_loop())
        await done
        spent = time.process_time() - began
        monitor.stop()
        return spent / beats

    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def start_sidecar(interval: str, *, pinned: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIDECAR_HEALTH_HEARTBEAT_INTERVAL": interval}
    command = [
        sys.executable, "-m", "sidecar", "run", "bench.apps:app", "--host", "127.0.0.1",
        "--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(free_port()),
        "--drain-delay", "0", "--log-level", "warning",
    ]  # fmt: skip
    if pinned:
        command = ["taskset", "-c", "0", *command]
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        wait_until_answering(port, proc)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def idle_cpu(interval: str, window: float) -> float:
    """CPU seconds per second of an idle sidecar with this heartbeat interval."""
    proc, _ = start_sidecar(interval, pinned=False)
    try:
        time.sleep(1.0)  # let startup's own work settle before the window opens
        before = cpu_seconds(proc.pid)
        time.sleep(window)  # the measurement window: the process is idle
        return (cpu_seconds(proc.pid) - before) / window
    finally:
        stop(proc)


def loaded_cpu(interval: str, duration: int) -> tuple[float, float]:
    """(server CPU seconds per request, requests/s) under wrk, server on CPU 0."""
    proc, port = start_sidecar(interval, pinned=True)
    url = f"http://127.0.0.1:{port}/plain"
    wrk = ["taskset", "-c", "1", "wrk", "-t1", "-c64"]
    try:
        subprocess.run([*wrk, "-d1s", url], capture_output=True, check=True)  # warm-up
        before = cpu_seconds(proc.pid)
        out = subprocess.run(
            [*wrk, f"-d{duration}s", url], capture_output=True, text=True, check=True
        ).stdout
        spent = cpu_seconds(proc.pid) - before
    finally:
        stop(proc)
    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if requests is None or rate is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return spent / int(requests.group(1)), float(rate.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beats", type=int, default=200_000)
    parser.add_argument("--window", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per run")
    args = parser.parse_args()

    import uvloop

    print("CPU per heartbeat (back to back; an upper bound):")
    for name, factory in (("uvloop", uvloop.new_event_loop), ("asyncio", asyncio.new_event_loop)):
        cost = statistics.median(per_beat(factory, args.beats) for _ in range(3))
        share = cost * 10  # at the default 10 heartbeats per second
        print(f"  {name:8} {cost * 1e6:6.2f} us/beat -> {share * 100:.4f}% of a core at 10/s")

    intervals = {"off": "0", "0.1 s (default)": "0.1", "1 ms": "0.001"}
    runs: dict[str, list[float]] = {name: [] for name in intervals}
    for _ in range(args.rounds):  # interleaved, so drift hits every setting alike
        for name, interval in intervals.items():
            runs[name].append(idle_cpu(interval, args.window))
    print(f"\nIdle sidecar process, CPU per second over {args.window:g} s (median of "
          f"{args.rounds}; /proc resolution {1000 / _TICKS:g} ms):")  # fmt: skip
    for name, values in runs.items():
        print(
            f"  heartbeat {name:16} {statistics.median(values) * 1000:6.2f} ms/s  "
            f"(runs: {', '.join(f'{v * 1000:.1f}' for v in values)})"
        )

    loaded: dict[str, list[tuple[float, float]]] = {name: [] for name in intervals}
    for _ in range(args.rounds):
        for name, interval in intervals.items():
            loaded[name].append(loaded_cpu(interval, args.duration))
    print(
        f"\nUnder wrk (/plain, 64 connections, {args.duration} s, server on CPU 0), "
        f"median of {args.rounds}:"
    )
    base = statistics.median(cost for cost, _ in loaded["off"])
    for name, values in loaded.items():
        cost = statistics.median(c for c, _ in values)
        rate = statistics.median(r for _, r in values)
        print(
            f"  heartbeat {name:16} {cost * 1e6:6.1f} us CPU/request "
            f"({(cost / base - 1) * 100:+5.1f}% vs off)   {rate:8.0f} req/s  "
            f"(runs: {', '.join(f'{c * 1e6:.1f}' for c, _ in values)} us)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
