"""Every Prometheus instrument of the sidecar, on an explicit registry.

A leaf module: it imports nothing from the package, so any layer can record into it.
Metric names and labels are part of the public interface (documented in README.md).
"""

from __future__ import annotations

import platform
from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

STARTUP_FAILURE_REASONS = ("failed", "exception", "timeout", "import")
SHUTDOWN_FAILURE_REASONS = ("failed", "exception", "timeout")

# Methods outside this set are counted as "other": the method is client-controlled and
# an unbounded label would let any client create new time series.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)

# Spans fast API calls (a few ms) up to slow endpoints and long polls (tens of seconds).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The sidecar's instruments; a fresh registry per instance (tests make their own)."""

    def __init__(
        self,
        *,
        version: str,
        phases: Sequence[str],
        registry: CollectorRegistry | None = None,
        process_collectors: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        if process_collectors:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

        self.build_info = Info("sidecar_build", "Sidecar version and Python runtime.", registry=reg)
        self.build_info.info({"version": version, "python": platform.python_version()})

        self.startup_duration = Gauge(
            "sidecar_lifespan_startup_duration_seconds",
            "Duration of the last lifespan startup attempt.",
            registry=reg,
        )
        self.startup_failures = Counter(
            "sidecar_lifespan_startup_failures_total",
            "Lifespan startup attempts that failed, by reason.",
            ["reason"],
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
        for reason in STARTUP_FAILURE_REASONS:
            self.startup_failures.labels(reason)
        for reason in SHUTDOWN_FAILURE_REASONS:
            self.shutdown_failures.labels(reason)

        self.phase = Gauge(
            "sidecar_lifecycle_phase",
            "1 for the current lifecycle phase, 0 for the others.",
            ["phase"],
            registry=reg,
        )
        self._phases = tuple(phases)
        self.ready = Gauge(
            "sidecar_ready", "1 while the readiness probe passes, else 0.", registry=reg
        )

        self.requests = Counter(
            "sidecar_http_requests_total",
            "HTTP requests served by the app port, by method and status code.",
            ["method", "code"],
            registry=reg,
        )
        self.request_duration = Histogram(
            "sidecar_http_request_duration_seconds",
            "Time from request received to response completed, by method.",
            ["method"],
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge(
            "sidecar_http_requests_in_flight",
            "HTTP requests being handled by the app right now.",
            registry=reg,
        )
        self._request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def set_phase(self, current: str, *, ready: bool) -> None:
        """Set the phase series (exactly one is 1) and the ready gauge."""
        for name in self._phases:
            self.phase.labels(name).set(1 if name == current else 0)
        self.ready.set(1 if ready else 0)

    def observe_request(self, method: str, status: int, seconds: float) -> None:
        """Count one finished request and record its duration."""
        label = method if method in KNOWN_METHODS else "other"
        key = (label, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(label, str(status)),
                self.request_duration.labels(label),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Encode the registry in the format the scraper asked for (text or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
