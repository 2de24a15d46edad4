"""What a worker reports to its supervisor about itself, in its status messages."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..probe import Probe, passes
from .channel import Message

if TYPE_CHECKING:
    from ..runner import Sidecar


def worker_status(sidecar: Sidecar) -> Message:
    """What a worker reports to its supervisor (on the admin thread, twice a second).

    The supervisor decides with the verdicts and sums the counters; the keys are read
    by ``workers.pool``, ``workers.probes`` and ``workers.metrics``.
    """
    probes, metrics, server = sidecar.probes, sidecar.metrics, sidecar.app_server
    checks = {probe: probes.checks(probe) for probe in Probe}
    lines = {
        probe.value: [[c.name, c.ok, c.message, c.critical] for c in found]
        for probe, found in checks.items()
    }
    labelled: dict[str, dict[str, float]] = {}
    counters: dict[str, float] = {}
    for instrument in (
        metrics.requests_aborted,
        metrics.shutdown_failures,
        metrics.check_failures,
        metrics.lifespan_crashes,
    ):
        for family in instrument.collect():
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                if sample.labels:
                    [label] = sample.labels.values()
                    labelled.setdefault(family.name, {})[label] = sample.value
                else:
                    counters[family.name] = sample.value
    statuses = {
        sample.labels["check"]: sample.value
        for family in metrics.check_status.collect()
        for sample in family.samples
    }
    lag, longest = sidecar.loop_monitor.sample()
    return {
        "pid": os.getpid(),
        "phase": sidecar.lifecycle.phase.value,
        "started": sidecar.lifecycle.startup_complete,
        "ready": passes(checks[Probe.READINESS]),
        "live": passes(checks[Probe.LIVENESS]),
        **lines,
        "lag": lag,
        "longest_stall": longest,
        "requests": metrics.requests.snapshot(),
        "loop_lag": metrics.loop_lag.snapshot(),
        "counters": counters,
        "labelled": labelled,
        "checks": statuses,
        "gauges": {
            "in_flight": metrics.requests.in_flight,
            "connections_open": server.connections_open if server is not None else 0,
            "websocket_connections": server.websocket_connections if server else 0,
        },
        "served": server.served if server is not None else 0,
    }
