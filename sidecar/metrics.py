"""Every Prometheus instrument of the sidecar, on an explicit registry.

A leaf module: it imports nothing from the package, so any layer can record into it.
Metric names and labels are part of the public interface (documented in docs/observability.md).
"""

from __future__ import annotations

import contextlib
import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
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

STARTUP_FAILURE_REASONS = ("failed", "exception", "timeout", "import")
SHUTDOWN_FAILURE_REASONS = ("failed", "exception", "timeout")

# Methods outside this set are counted as "other": the method is client-controlled and
# an unbounded label would let any client create new time series.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)

# Spans fast API calls (a few ms) up to slow endpoints and long polls (tens of seconds).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# From a busy loop's normal jitter (a millisecond) to a loop stuck for a minute.
LOOP_LAG_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# Health checks are pings: a few ms when healthy, up to their timeout (seconds) when not.
CHECK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def cumulative(bounds: Sequence[float], counts: Sequence[float]) -> list[tuple[str, float]]:
    """Histogram buckets, cumulative, from observations per bucket (the last is +Inf)."""
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append((_bucket_label(bound), running))
    return buckets


# OpenTelemetry's advice for http.server.request.duration (semantic conventions 1.23+).
OTEL_REQUEST_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

#: Route label of requests no route took, and of routes beyond ``max_routes``.
UNMATCHED_ROUTE = "unmatched"
OVERFLOW_ROUTE = "other"

MetricNames = Literal["sidecar", "opentelemetry"]
# Route names past the limit that are remembered, as a multiple of the limit.
_ROUTES_REMEMBERED = 10


class RequestStats(Collector):
    """Request counts and latency by method, route and status; the in-flight gauge.

    ``observe`` runs on the app's event loop for every request, so it only updates plain
    Python numbers (one thread writes them); the admin thread turns them into metric
    families when scraped, from copies taken with single C-level operations. This keeps
    prometheus_client's per-sample locks off the request path.

    One record per (method, route, status): the observations per latency bucket and
    their sum. The counter by status code, the histogram by status class and the
    OpenTelemetry histogram by status code are all sums of these records, made at
    scrape time. Labels stay bounded: methods outside the standard set count as
    ``other`` (the client chooses the method), and routes past ``max_routes`` distinct
    ones as ``other`` (routes come from the app's router, not from the request path,
    but an app may have many).
    """

    def __init__(
        self,
        buckets: Sequence[float] | None = None,
        *,
        max_routes: int = 100,
        names: MetricNames = "sidecar",
    ) -> None:
        if buckets is None:
            buckets = OTEL_REQUEST_BUCKETS if names == "opentelemetry" else REQUEST_BUCKETS
        self._bounds = tuple(buckets)
        self._names = names
        self._max_routes = max_routes
        # method -> route -> status -> [observations per bucket (the last is +Inf)..., sum]
        self._records: dict[str, dict[str, dict[int, list[float]]]] = {}
        # route as the app names it -> its label (itself, or the overflow label)
        self._routes: dict[str, str] = {UNMATCHED_ROUTE: UNMATCHED_ROUTE}
        self._distinct = 0
        self.in_flight = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        label = self._routes.get(route)
        if label is None:
            label = self._add_route(route)
        # Nested dicts of strings and ints: cheaper to look up than a tuple key. Only
        # standard methods and "other" are keys, so another method takes the slow path.
        record = None
        by_route = self._records.get(method)
        if by_route is not None:
            codes = by_route.get(label)
            if codes is not None:
                record = codes.get(status)
        if record is None:
            record = self._add(method, label, status)
        record[bisect_left(self._bounds, seconds)] += 1
        record[-1] += seconds

    def _add_route(self, route: str) -> str:
        if self._distinct < self._max_routes:
            self._distinct += 1
            label = route
        else:
            label = OVERFLOW_ROUTE
            if len(self._routes) > _ROUTES_REMEMBERED * self._max_routes:
                return label  # an app naming routes without bound: never remember more
        # A new dict, swapped in whole, like the records; the overflowed names are
        # remembered too (they are the app's route templates), so that they do not come
        # here again.
        self._routes = {**self._routes, route: label}
        return label

    def _add(self, method: str, route: str, status: int) -> list[float]:
        if method not in KNOWN_METHODS:
            method = "other"
        by_route = self._records.get(method, {})
        existing = by_route.get(route, {}).get(status)
        if existing is not None:  # a method counted as other
            return existing
        record = [0.0] * (len(self._bounds) + 2)
        # New dicts along the path, swapped in whole: a scrape iterating a snapshot never
        # sees one grow.
        codes = {**by_route.get(route, {}), status: record}
        self._records = {**self._records, method: {**by_route, route: codes}}
        return record

    def snapshot(self) -> list[tuple[tuple[str, str, int], list[float]]]:
        """Every record as ``((method, route, status), [per bucket..., sum])``, copied."""
        return sorted(
            ((method, route, status), list(record))
            for method, by_route in self._records.items()
            for route, codes in by_route.items()
            for status, record in codes.items()
        )

    def collect(self) -> Iterable[Metric]:
        return self.families(self.snapshot(), self.in_flight)

    def families(
        self, snapshot: list[tuple[tuple[str, str, int], list[float]]], in_flight: int
    ) -> Iterable[Metric]:
        """The metric families of ``snapshot`` (this process's, or several summed)."""
        if self._names == "opentelemetry":
            yield from self._collect_opentelemetry(snapshot)
        else:
            yield from self._collect_sidecar(snapshot)
        yield GaugeMetricFamily(
            "sidecar_http_requests_in_flight",
            "HTTP requests received whose response is not complete yet.",
            value=in_flight,
        )

    def _collect_sidecar(
        self, snapshot: list[tuple[tuple[str, str, int], list[float]]]
    ) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "sidecar_http_requests",
            "HTTP requests served by the app port, by method, route and status code.",
            labels=["method", "route", "code"],
        )
        by_class: dict[tuple[str, str, str], list[float]] = {}
        for (method, route, status), record in snapshot:
            requests.add_metric([method, route, str(status)], sum(record[:-1]))
            merged = by_class.setdefault((method, route, f"{status // 100}xx"), [0.0] * len(record))
            for index, value in enumerate(record):
                merged[index] += value
        yield requests
        duration = HistogramMetricFamily(
            "sidecar_http_request_duration_seconds",
            "Time from request received to response completed, by method, route and status class.",
            labels=["method", "route", "status_class"],
        )
        for labels, record in sorted(by_class.items()):
            duration.add_metric(
                list(labels), cumulative(self._bounds, record[:-1]), sum_value=record[-1]
            )
        yield duration

    def _collect_opentelemetry(
        self, snapshot: list[tuple[tuple[str, str, int], list[float]]]
    ) -> Iterable[Metric]:
        # http.server.request.duration as an OpenTelemetry Prometheus exporter names it.
        # The semantic conventions leave http.route out when no route matched (an empty
        # label is no label) and call an unknown method _OTHER.
        duration = HistogramMetricFamily(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            labels=["http_request_method", "http_route", "http_response_status_code"],
        )
        for (method, route, status), record in snapshot:
            duration.add_metric(
                [
                    "_OTHER" if method == "other" else method,
                    "" if route == UNMATCHED_ROUTE else route,
                    str(status),
                ],
                cumulative(self._bounds, record[:-1]),
                sum_value=record[-1],
            )
        yield duration


class LoopLagStats(Collector):
    """Event-loop lag: a histogram of heartbeat delays, the current lag, the longest stall.

    ``observe`` runs on the app's event loop for every heartbeat, so like ``RequestStats``
    it only updates plain numbers. The two gauges come from ``sampler``, which the loop
    monitor sets and which is called on the admin thread when scraped. Without a sampler
    (loop monitoring turned off) nothing is exported.
    """

    def __init__(self, buckets: Sequence[float] = LOOP_LAG_BUCKETS) -> None:
        self._bounds = tuple(buckets)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        #: Returns (current lag, longest stall in the recent window), in seconds.
        self.sampler: Callable[[], tuple[float, float]] | None = None

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def snapshot(self) -> list[float]:
        """The observations per bucket (the last is +Inf) and their sum, copied."""
        return [*self._counts, self._sum]

    def collect(self) -> Iterable[Metric]:
        sampler = self.sampler
        if sampler is None:
            return
        counts, total = list(self._counts), self._sum
        lag = HistogramMetricFamily(
            "sidecar_event_loop_lag_seconds",
            "How late each heartbeat ran on the app's event loop.",
        )
        lag.add_metric([], cumulative(self._bounds, counts), sum_value=total)
        yield lag
        current, longest = sampler()
        yield GaugeMetricFamily(
            "sidecar_event_loop_current_lag_seconds",
            "How far behind the app's event loop is now (0 while it keeps up).",
            value=current,
        )
        yield GaugeMetricFamily(
            "sidecar_event_loop_longest_stall_seconds",
            "The longest event-loop lag seen in the last minute, including a stall in progress.",
            value=longest,
        )


class LifecycleStats(Collector):
    """The phase and the probe verdicts, computed when scraped from what the probes see.

    ``sidecar_ready`` is 1 exactly when ``/readyz`` would answer 200 (a failing critical
    check makes it 0 while the phase is still ``ready``), ``sidecar_live`` likewise for
    ``/livez``, and the phase is read at that moment, so no two updates can race.
    """

    def __init__(self, phases: Sequence[str]) -> None:
        self._phases = tuple(phases)
        #: Return the current phase, whether /readyz passes and whether /livez passes.
        self.sampler: Callable[[], tuple[str, bool, bool]] = lambda: (self._phases[0], False, True)

    def collect(self) -> Iterable[Metric]:
        current, ready, live = self.sampler()
        phase = GaugeMetricFamily(
            "sidecar_lifecycle_phase",
            "1 for the current lifecycle phase, 0 for the others.",
            labels=["phase"],
        )
        for name in self._phases:
            phase.add_metric([name], 1 if name == current else 0)
        yield phase
        yield GaugeMetricFamily(
            "sidecar_ready",
            "1 while the readiness probe (/readyz) passes, else 0.",
            value=1 if ready else 0,
        )
        yield GaugeMetricFamily(
            "sidecar_live",
            "1 while the liveness probe (/livez) passes, else 0.",
            value=1 if live else 0,
        )


class _WithoutCreated(Collector):
    """Export a registry's families without their ``_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Metrics:
    """The sidecar's instruments; a fresh registry per instance (tests make their own)."""

    def __init__(
        self,
        *,
        version: str,
        phases: Sequence[str],
        registry: CollectorRegistry | None = None,
        process_collectors: bool = True,
        max_routes: int = 100,
        request_metric_names: MetricNames = "sidecar",
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process_collectors:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        # The instruments live in a registry of their own, exported without their
        # ``_created`` series: one per counter and histogram child, each a constant that
        # only says when the process started. prometheus_client's switch for that is
        # process-wide; this leaves other registries in the process as they are.
        reg = CollectorRegistry()
        self.registry.register(_WithoutCreated(reg))

        self.build_info = Info("sidecar_build", "Sidecar version and Python runtime.", registry=reg)
        self.build_info.info({"version": version, "python": platform.python_version()})

        self.startup_duration = Gauge(
            "sidecar_lifespan_startup_duration_seconds",
            "Duration of the last lifespan startup attempt.",
            registry=reg,
        )
        self.shutdown_duration = Gauge(
            "sidecar_lifespan_shutdown_duration_seconds",
            "Duration of the lifespan shutdown.",
            registry=reg,
        )
        self.shutdown_failures = Counter(
            "sidecar_lifespan_shutdown_failures_total",
            "Lifespan shutdowns that failed, by reason.",
            ["reason"],
            registry=reg,
        )
        self.lifespan_crashes = Counter(
            "sidecar_lifespan_crashes_total",
            "Lifespan tasks that raised after startup had completed.",
            registry=reg,
        )
        # Startup attempts and failures are counted by ``record.StartupRecord``, which
        # keeps them across container restarts; the runner registers it here.
        for reason in SHUTDOWN_FAILURE_REASONS:
            self.shutdown_failures.labels(reason)

        self.lifecycle = LifecycleStats(phases)
        reg.register(self.lifecycle)

        self.drain_duration = Gauge(
            "sidecar_drain_duration_seconds",
            "Time from the start of the drain (not ready) until the last request finished "
            "or was cut.",
            registry=reg,
        )
        self.requests_aborted = Counter(
            "sidecar_http_requests_aborted",
            "Requests still running at the graceful deadline, cut at shutdown: answered 503 "
            "before their response began (stage before_response), or cut during it.",
            ["stage"],
            registry=reg,
        )
        for stage in ("before_response", "during_response"):
            self.requests_aborted.labels(stage)
        self.connections_open = Gauge(
            "sidecar_connections_open", "Open client connections on the app port.", registry=reg
        )
        self.websocket_connections = Gauge(
            "sidecar_websocket_connections", "Open WebSocket connections.", registry=reg
        )
        self.requests = RequestStats(max_routes=max_routes, names=request_metric_names)
        reg.register(self.requests)
        self.loop_lag = LoopLagStats()
        reg.register(self.loop_lag)

        # Check names are bounded: they come from the config and the app's own code,
        # never from a request.
        self.check_status = Gauge(
            "sidecar_health_check_status",
            "1 while a health check counts as passing, 0 while it counts as failed.",
            ["check"],
            registry=reg,
        )
        self.check_duration = Histogram(
            "sidecar_health_check_duration_seconds",
            "Duration of health check runs (a run that timed out counts its timeout).",
            ["check"],
            buckets=CHECK_BUCKETS,
            registry=reg,
        )
        self.check_failures = Counter(
            "sidecar_health_check_failures_total",
            "Health check runs that failed (raised, returned False or timed out).",
            ["check"],
            registry=reg,
        )

    def add_check(self, name: str) -> None:
        """Export a new check's series at once, its failure count at 0.

        So ``increase()`` over the counter sees its first failure (a series that appears
        with the value 1 has increased by nothing).
        """
        self.check_failures.labels(name)

    def forget_check(self, name: str) -> None:
        """Drop a removed check's series, so a gone check does not look stuck."""
        for family in (self.check_status, self.check_duration, self.check_failures):
            with contextlib.suppress(KeyError):  # never recorded
                family.remove(name)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Encode the registry in the format the scraper asked for (text or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
