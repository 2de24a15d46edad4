"""Plot a rolling update as Prometheus saw it: the figure in docs/observability.md.

Runs the rollout simulator (``tests/rollout/simulator.py``) while a real Prometheus
server scrapes every pod's ``/metrics`` once a second (pods are added to its file-based
service discovery as they start), then queries Prometheus for the lifecycle phase of
each pod, the ready pods and the request rate by status, and draws them with matplotlib.

    python bench/rollout_plot.py [--out bench/rollout-metrics.png] [--pods 3 --rollouts 2]

Needs the ``prometheus`` binary (Debian package ``prometheus``) and matplotlib.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's tests.rollout and sidecar, not an install

from tests.rollout import simulator  # noqa: E402

PHASES = ("starting", "ready", "draining", "stopping", "stopped", "failed")
COLOURS = {
    "starting": "#9ecae1",
    "ready": "#31a354",
    "draining": "#fd8d3c",
    "stopping": "#e6550d",
    "stopped": "#bdbdbd",
    "failed": "#de2d26",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise SystemExit("prometheus is required: apt-get install -y prometheus")
        self.port = _free_port()
        self.targets = workdir / "targets.json"
        self.targets.write_text("[]")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [
                {
                    "job_name": "rollout",
                    "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=error",
            ]
        )
        self._pods: list[dict[str, Any]] = []

    def add(self, name: str, admin_url: str) -> None:
        address = admin_url.removeprefix("http://")
        self._pods.append({"targets": [address], "labels": {"pod": name}})
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._pods))
        tmp.replace(self.targets)  # atomic: Prometheus never reads half a file

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 0.5})
        url = f"http://127.0.0.1:{self.port}/api/v1/query_range?{params}"
        with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
            document = json.load(response)
        return list(document["data"]["result"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def plot(prom: Prometheus, start: float, end: float, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = prom.query_range('sidecar_lifecycle_phase{job="rollout"} == 1', start, end)
    ready = prom.query_range('sum(sidecar_ready{job="rollout"})', start, end)
    rate = prom.query_range(
        'sum by (code) (rate(sidecar_http_requests_total{job="rollout"}[3s]))', start, end
    )
    figure, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(11, 7.5), sharex=True, gridspec_kw={"height_ratios": [2.2, 1, 1.4]}
    )
    pods = sorted({series["metric"]["pod"] for series in phases})
    for row, pod in enumerate(pods):
        for series in phases:
            if series["metric"]["pod"] != pod:
                continue
            phase = series["metric"]["phase"]
            for timestamp, _ in series["values"]:
                top.barh(row, 0.5, left=float(timestamp) - start, height=0.7,
                         color=COLOURS[phase], linewidth=0)  # fmt: skip
    top.set_yticks(range(len(pods)), pods)
    top.set_title(title)
    top.legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=COLOURS[p]) for p in PHASES[:5]],
        labels=list(PHASES[:5]),
        loc="upper center",
        ncol=5,
        fontsize=8,
        bbox_to_anchor=(0.5, -0.05),
        frameon=False,
    )
    top.set_ylabel("pod phase")
    for series in ready:
        xs = [float(t) - start for t, _ in series["values"]]
        middle.step(xs, [float(v) for _, v in series["values"]], where="post", color="#31a354")
    middle.set_ylabel("ready pods")
    middle.set_ylim(bottom=0)
    for series in sorted(rate, key=lambda s: s["metric"].get("code", "")):
        xs = [float(t) - start for t, _ in series["values"]]
        bottom.plot(xs, [float(v) for _, v in series["values"]],
                    label=f"HTTP {series['metric'].get('code', '?')}")  # fmt: skip
    bottom.set_ylabel("requests/s")
    bottom.set_xlabel("seconds")
    bottom.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "rollout-metrics.png")
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--rate", type=float, default=150.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        prom = Prometheus(Path(workdir))
        original_start = simulator.Pod.start

        async def start_and_register(pod: simulator.Pod) -> None:
            await original_start(pod)
            prom.add(pod.name, pod.admin_url)

        simulator.Pod.start = start_and_register  # type: ignore[method-assign]
        settings = simulator.Settings(
            pods=args.pods, rollouts=args.rollouts, rate=args.rate, warmup=4.0, cooldown=4.0
        )
        try:
            began = time.time()
            report = simulator.run(settings, progress=print)
            ended = time.time()
            time.sleep(3)  # let the last scrapes land
            title = (
                f"Rolling update of {args.pods} pods x{args.rollouts} at {args.rate:g} req/s: "
                f"{report.failed} of {report.sent} requests failed"
            )
            plot(prom, began, ended + 2, args.out, title)
        finally:
            prom.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
