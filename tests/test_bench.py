"""The benchmark's apps and harnesses work, so a benchmark run measures what it says."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import apps, instructions, soak
from bench.compare import SCENARIOS, Results, Sample, markdown, summarize

from .conftest import ROOT, fetch, require_binaries


def test_raw_bench_app_endpoints(run_sidecar: Any) -> None:
    running = run_sidecar(apps.app)
    assert fetch(running.app("/plain")).body == b"Hello, world!"
    assert fetch(running.app("/json")).json() == {"message": "Hello, world!"}
    body = bytes(range(256)) * 16
    assert fetch(running.app("/echo"), "POST", body=body).body == body
    streamed = fetch(running.app("/stream"))
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert len(streamed.body) == apps.STREAM_CHUNKS * len(apps.STREAM_CHUNK) == 2**20
    assert fetch(running.app("/block?ms=1")).status == 200


def test_fastapi_bench_app_reads_lifespan_state(run_sidecar: Any) -> None:
    from bench import fastapi_app

    running = run_sidecar(fastapi_app.app)
    assert fetch(running.app("/json")).json() == {"message": "Hello, world!"}


@pytest.mark.parametrize("variant", instructions.VARIANTS)
def test_instruction_harness_serves_requests(variant: str) -> None:
    # The same driver valgrind counts: every request must be answered, or it hangs.
    asyncio.run(asyncio.wait_for(instructions.drive(variant, 50, "/json"), timeout=30))


def test_report_names_every_measured_scenario() -> None:
    results = Results(args={"rounds": 1, "duration": 1}, machine={
        "date": "2026-01-01", "cpus": 2, "python": "3.11", "platform": "linux",
    })  # fmt: skip
    for scenario in SCENARIOS:
        results.samples.append(Sample("uvicorn", scenario.name, 1, 1000.0, 1.0, 2.0))
        results.samples.append(Sample("sidecar", scenario.name, 1, 1100.0, 1.0, 2.5))
    table = summarize(results, ["uvicorn", "sidecar"])
    report = markdown(results, table, ["uvicorn", "sidecar"])
    for scenario in SCENARIOS:
        assert f"| {scenario.title} | 1,000 (2.0 ms) | 1,100 (2.5 ms) | **1.10x** |" in report


def test_soak_quick_run_exercises_and_counts_every_kind(tmp_path: Path) -> None:
    # Checks the harness, not the figures: a noisy machine may miss the RSS target in a
    # run this short (exit status 3), the full run is what the README reports.
    require_binaries("wrk", "taskset")
    command = [sys.executable, "bench/soak.py", "--quick", "--requests", "3000"]
    result = subprocess.run(
        [*command, "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = result.stdout + result.stderr
    assert result.returncode in (0, 3), output
    [report_file] = tmp_path.glob("soak-*.json")
    report = json.loads(report_file.read_text())
    assert report["completed_run"]
    assert report["failures"] == {}, report["failure_examples"]
    assert set(report["completed"]) == set(soak.KINDS)
    assert all(count > 0 for count in report["completed"].values()), report["completed"]
    assert report["total"] == sum(report["completed"].values()) >= 3000
    assert report["server_codes"]["499"] > 0  # the abandoned bodies, as the sidecar saw them
    phases = [sample["phase"] for sample in report["samples"]]
    assert phases[0] == "baseline"
    assert phases[-2:] == ["end of load", "settled"]
    for key in ("rss_growth_pct", "fds_baseline", "fds_end_of_load", "fds_after_settle"):
        assert isinstance(report[key], int | float), key
    markdown_text = report_file.with_suffix(".md").read_text()
    for text in (markdown_text, result.stdout):
        assert "RSS growth after warm-up: " in text
        assert f"fds: baseline {report['fds_baseline']}, after load " in text


def test_the_workers_benchmark_measures_what_it_says() -> None:
    from bench import workers

    rss, pss = workers.memory_mb(os.getpid())
    assert 0 < pss <= rss
    # Every server it starts is installed and takes its options.
    for name in workers.SERVERS:
        argv = workers.command(name, 2, 8000, 8081)
        module = argv[argv.index("-m") + 1] if "-m" in argv else "sidecar.workers.supervisor"
        assert importlib.util.find_spec(module) is not None, module
    assert "--workers" in workers.command("sidecar", 2, 8000, 8081)
    table = workers.Results(args={"rounds": 1, "duration": 1})
    for server, rate in (("sidecar", 1000.0), ("uvicorn", 900.0)):
        for count in (1, 2):
            table.samples.append(workers.Sample(server, count, 1, rate * count, 2.0, 50.0, 30.0))
    report = workers.markdown(table)
    assert "sidecar 2 workers / 1 worker: **2.00x**" in report
    assert "sidecar 2 workers / uvicorn --workers 2: **1.11x**" in report
