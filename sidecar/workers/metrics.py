"""The metrics of a pod with several workers, served by the supervisor.

No ``PROMETHEUS_MULTIPROC_DIR``, no files: each worker reports its counters in its
status messages, and the supervisor sums them when scraped. What an exited worker had
counted is kept (``retire``), so a counter never goes backwards when a worker is
replaced. Series that mean something per worker carry a ``worker`` label (the slot):
its phase, its event loop's lag, its memory.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Gauge, Info
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .._version import __version__
from ..config import Config
from ..metrics import LOOP_LAG_BUCKETS, LifecycleStats, RequestStats, cumulative
from ..record import StartupRecord
from ..state import Phase
from .pool import Pool, Reason, Worker

Key = tuple[str, str, int]


def _add(into: dict[Any, list[float]], key: Any, values: list[float]) -> None:
    total = into.get(key)
    if total is None:
        into[key] = list(values)
    else:
        for index, value in enumerate(values):
            total[index] += value


class Retired:
    """What exited workers counted, kept for the sums."""

    def __init__(self) -> None:
        self.requests: dict[Key, list[float]] = {}
        self.loop_lag = [0.0] * (len(LOOP_LAG_BUCKETS) + 2)
        self.counters: dict[str, float] = {}
        self.labelled: dict[tuple[str, str], float] = {}

    def add(self, status: dict[str, Any]) -> None:
        for key, record in status.get("requests", ()):
            _add(self.requests, (key[0], key[1], int(key[2])), record)
        lag = status.get("loop_lag")
        if lag:
            for index, value in enumerate(lag):
                self.loop_lag[index] += value
        for name, value in status.get("counters", {}).items():
            self.counters[name] = self.counters.get(name, 0.0) + value
        for name, by_label in status.get("labelled", {}).items():
            for label, value in by_label.items():
                key = (name, label)
                self.labelled[key] = self.labelled.get(key, 0.0) + value


class Sums(NamedTuple):
    """The workers' figures added up (request records as ``RequestStats.snapshot`` has them)."""

    requests: dict[Key, list[float]]
    loop_lag: list[float]
    counters: dict[str, float]
    labelled: dict[tuple[str, str], float]
    gauges: dict[str, float]


class WorkerMetrics(Collector):
    """The families summed over the workers, and the per-worker ones."""

    def __init__(self, pool: Pool, requests: RequestStats, phases: Iterable[str]) -> None:
        self._pool = pool
        self._requests = requests  # renders the summed records like a single process
        self._phases = tuple(phases)
        self.retired = Retired()

    def retire(self, worker: Worker) -> None:
        self.retired.add(worker.status)

    def sums(self) -> Sums:
        """What the running workers report plus what the exited ones had counted."""
        retired = self.retired
        sums = Sums(
            requests={key: list(record) for key, record in retired.requests.items()},
            loop_lag=list(retired.loop_lag),
            counters=dict(retired.counters),
            labelled=dict(retired.labelled),
            gauges={},
        )
        requests, loop_lag, counters, labelled, gauges = sums
        for worker in self._pool.everyone:
            if worker.exit_code is not None:
                continue
            status = worker.status
            for key, record in status.get("requests", ()):
                _add(requests, (key[0], key[1], int(key[2])), record)
            for index, value in enumerate(status.get("loop_lag") or ()):
                loop_lag[index] += value
            for name, value in status.get("counters", {}).items():
                counters[name] = counters.get(name, 0.0) + value
            for name, by_label in status.get("labelled", {}).items():
                for label, value in by_label.items():
                    labelled[(name, label)] = labelled.get((name, label), 0.0) + value
            for name, value in status.get("gauges", {}).items():
                gauges[name] = gauges.get(name, 0.0) + value
        return sums

    def collect(self) -> Iterable[Metric]:
        requests, loop_lag, counters, labelled, gauges = self.sums()
        running = [w for w in self._pool.everyone if w.exit_code is None]
        yield from self._requests.families(
            sorted(requests.items()), int(gauges.get("in_flight", 0))
        )
        lag = HistogramMetricFamily(
            "sidecar_event_loop_lag_seconds",
            "How late each heartbeat ran on the workers' event loops (all workers).",
        )
        lag.add_metric([], cumulative(LOOP_LAG_BUCKETS, loop_lag[:-1]), sum_value=loop_lag[-1])
        yield lag
        yield from _labelled_counters(labelled)
        yield from _plain_counters(counters)
        for name, help_text in (
            ("connections_open", "Open client connections on the app port (all workers)."),
            ("websocket_connections", "Open WebSocket connections (all workers)."),
        ):
            yield GaugeMetricFamily(f"sidecar_{name}", help_text, value=gauges.get(name, 0.0))
        yield from self._per_worker(running)
        yield from self._pool_families()

    def _per_worker(self, running: list[Worker]) -> Iterable[Metric]:
        phase = GaugeMetricFamily(
            "sidecar_worker_phase",
            "1 for each worker's current lifecycle phase, 0 for the others.",
            labels=["worker", "phase"],
        )
        lag = GaugeMetricFamily(
            "sidecar_event_loop_current_lag_seconds",
            "How far behind each worker's event loop is now (0 while it keeps up).",
            labels=["worker"],
        )
        stall = GaugeMetricFamily(
            "sidecar_event_loop_longest_stall_seconds",
            "The longest event-loop lag of each worker in the last minute.",
            labels=["worker"],
        )
        rss = GaugeMetricFamily(
            "sidecar_worker_resident_memory_bytes",
            "Resident memory of each worker process.",
            labels=["worker"],
        )
        for worker in self._pool.workers:
            slot = str(worker.slot)
            for name in self._phases:
                phase.add_metric([slot, name], 1 if worker.phase == name else 0)
            if worker.exit_code is None:
                lag.add_metric([slot], float(worker.status.get("lag", 0.0)))
                stall.add_metric([slot], float(worker.status.get("longest_stall", 0.0)))
                rss.add_metric([slot], worker.rss)
        yield from (phase, lag, stall, rss)

    def _pool_families(self) -> Iterable[Metric]:
        pool = self._pool
        restarts = CounterMetricFamily(
            "sidecar_worker_restarts",
            "Workers replaced, by reason: crash (it exited), stuck (its event loop was "
            "blocked), max_requests and memory (recycled).",
            labels=["reason"],
        )
        for reason in Reason:
            restarts.add_metric([reason.value], pool.restarts[reason])
        yield restarts
        yield GaugeMetricFamily(
            "sidecar_workers_alive",
            "Worker processes running, replacements and leaving workers included.",
            value=sum(1 for w in pool.everyone if w.exit_code is None),
        )
        yield GaugeMetricFamily(
            "sidecar_workers_ready", "Workers whose readiness passes.", value=pool.ready_count
        )
        yield GaugeMetricFamily(
            "sidecar_workers", "Workers the pod runs (server.workers).", value=pool.size
        )


# Counters a worker reports with one label: metric name -> (label name, help).
LABELLED: dict[str, tuple[str, str]] = {
    "sidecar_http_requests_aborted": (
        "stage",
        "Requests still running at the graceful deadline, cut at shutdown (all workers).",
    ),
    "sidecar_lifespan_shutdown_failures": (
        "reason",
        "Lifespan shutdowns that failed, by reason (all workers).",
    ),
    "sidecar_health_check_failures": (
        "check",
        "Health check runs that failed (all workers).",
    ),
}
PLAIN: dict[str, str] = {
    "sidecar_lifespan_crashes": "Lifespan tasks that raised after startup had completed.",
}


def _labelled_counters(values: dict[tuple[str, str], float]) -> Iterable[Metric]:
    for name, (label, help_text) in LABELLED.items():
        family = CounterMetricFamily(name, help_text, labels=[label])
        for (metric, value_label), value in sorted(values.items()):
            if metric == name:
                family.add_metric([value_label], value)
        yield family


def _plain_counters(values: dict[str, float]) -> Iterable[Metric]:
    for name, help_text in PLAIN.items():
        yield CounterMetricFamily(name, help_text, value=values.get(name, 0.0))


class SupervisorMetrics:
    """The supervisor's registry: its own lifecycle and process, and the workers' sums."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        record: StartupRecord,
        lifecycle_sample: Callable[[], tuple[str, bool, bool]],
        *,
        process_collectors: bool = True,
    ) -> None:
        self.registry = registry = CollectorRegistry()
        if process_collectors:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        Info("sidecar_build", "Sidecar version and Python runtime.", registry=registry).info(
            {"version": __version__, "python": platform.python_version()}
        )
        phases = [phase.value for phase in Phase]
        self.lifecycle = LifecycleStats(phases)
        self.lifecycle.sampler = lifecycle_sample
        registry.register(self.lifecycle)
        registry.register(record)
        self.drain_duration = Gauge(
            "sidecar_drain_duration_seconds",
            "Time from the start of the drain (not ready) until the last worker stopped.",
            registry=registry,
        )
        requests = RequestStats(max_routes=config.metrics.max_routes, names=config.metrics.names)
        self.workers = WorkerMetrics(pool, requests, phases)
        registry.register(self.workers)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Encode the registry in the format the scraper asked for (text or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
