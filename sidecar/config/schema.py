"""The configuration's schema: every section a frozen dataclass, every key documented.

Field metadata carries the documentation and the bounds, so validation, ``check-config``
output, the configuration reference and the chart's schema test agree by construction.
Durations are in seconds (fractions allowed) and say so in their ``_timeout``/``_delay``
names.
``sources`` reads the values from the file, the environment and the flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..probe import CHECK_FAILURE_THRESHOLD, CHECK_INTERVAL, CHECK_TIMEOUT
from ..redact import REDACTED, redact_url

ENV_PREFIX = "SIDECAR_"
#: What a secret's value is shown as, wherever configuration is printed.

#: The fields of an access log record: top-level keys of a JSON access log line, and
#: placeholders of ``logging.access_log_format``, with a value of the type they have.
ACCESS_LOG_FIELDS: Mapping[str, Any] = {
    "method": "GET",
    "path": "/items/7",
    "route": "/items/{item_id}",
    "query": "q=1",
    "status": 200,
    "duration_ms": 1.5,
    "bytes": 2,
    "client": "10.0.0.1:51234",
    "user_agent": "curl/8.5.0",
    "request_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
}
#: Placeholders only the text line has.
ACCESS_LOG_TEXT_FIELDS: Mapping[str, Any] = {
    "request_line": "GET /items/7?q=1 HTTP/1.1",
    "reason": "OK",
    "http_version": "1.1",
}

# uvicorn's access log line, with the duration added.
ACCESS_LOG_FORMAT = '%(client)s - "%(request_line)s" %(status)d %(reason)s %(duration_ms).1fms'


def _opt(default: Any, doc: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"doc": doc, **bounds})


@dataclass(frozen=True)
class AppConfig:
    target: str = _opt("", "The ASGI app as `module:attribute` (attribute may be dotted).")
    factory: bool = _opt(
        False, "Call the target with no arguments to get the app.", flags=("--factory",)
    )
    app_dir: str = _opt(
        ".",
        "Directory put first on `sys.path` before importing the target.",
        flags=("--app-dir",),
        path=True,
    )


@dataclass(frozen=True)
class ServerConfig:
    host: str = _opt("0.0.0.0", "Address the app port binds to.", flags=("--host",))
    port: int = _opt(8000, "App port (0 picks a free port).", min=0, max=65535, flags=("--port",))
    uds: str = _opt(
        "",
        "Serve the app on this Unix domain socket instead of host and port (the admin "
        "port stays TCP, for the kubelet).",
        flags=("--uds",),
        path=True,
    )
    fd: int = _opt(
        -1,
        "Serve the app on this inherited, already bound socket (a file descriptor, for "
        "socket activation) instead of host and port; -1: none.",
        min=-1,
        flags=("--fd",),
    )
    workers: int = _opt(
        1,
        "Worker processes serving the app on one shared socket, each with the app "
        "imported and its lifespan; more than 1 runs a supervisor that serves the admin "
        "port for all of them. 1: one process, no supervisor.",
        min=1,
        flags=("--workers",),
    )
    min_ready_workers: int = _opt(
        0,
        "Workers that must be ready for the pod to be ready (`/readyz`); 0: all of them.",
        min=0,
        flags=("--min-ready-workers",),
    )
    max_requests: int = _opt(
        0,
        "Replace a worker after this many requests (its replacement starts and is ready "
        "first, so capacity never dips); 0: never. Only with workers > 1.",
        min=0,
        flags=("--max-requests", "--limit-max-requests"),
    )
    max_requests_jitter: int = _opt(
        0,
        "Up to this many more requests, drawn per worker, so workers are not all replaced at once.",
        min=0,
        flags=("--max-requests-jitter", "--limit-max-requests-jitter"),
    )
    max_worker_memory: int = _opt(
        0,
        "Replace a worker whose resident memory passes this many bytes (the same way as "
        "max_requests); 0: never. Only with workers > 1.",
        min=0,
        flags=("--max-worker-memory",),
    )
    root_path: str = _opt(
        "", "ASGI `root_path` for apps mounted below a path prefix.", flags=("--root-path",)
    )
    backlog: int = _opt(2048, "Listen backlog of the app socket.", min=1, flags=("--backlog",))
    # Longer than the idle timeout of common load balancers (60 s), so the proxy, not the
    # sidecar, closes idle upstream connections; otherwise a proxy can reuse a connection
    # the sidecar is closing and answer its client with a 502.
    keep_alive_timeout: float = _opt(
        75.0,
        "Seconds an idle keep-alive connection stays open.",
        min=0,
        flags=("--keep-alive-timeout", "--timeout-keep-alive"),
    )
    loop: Literal["auto", "asyncio", "uvloop"] = _opt(
        "auto",
        "Event loop for the app: `auto` uses uvloop when it is installed.",
        flags=("--loop",),
    )
    gc_freeze: bool = _opt(
        True,
        "After startup, exclude everything allocated so far from garbage collection "
        "(`gc.freeze()`), so full collections do not add milliseconds to request latency.",
    )
    trusted_proxies: str = _opt(
        "",
        "Comma-separated addresses/CIDRs (or `*`) of proxies whose `Forwarded` and "
        "`X-Forwarded-*` headers set the client address, scheme and host; none by default.",
        flags=("--trusted-proxies", "--forwarded-allow-ips"),
    )
    tls_certfile: str = _opt(
        "",
        "PEM certificate (chain) for TLS on the app port; empty: plain HTTP.",
        flags=("--tls-certfile", "--ssl-certfile"),
        path=True,
    )
    tls_keyfile: str = _opt(
        "",
        "PEM private key for `tls_certfile`.",
        flags=("--tls-keyfile", "--ssl-keyfile"),
        path=True,
    )
    max_request_line: int = _opt(
        8190, "Longest request line (method, target, version) in bytes; longer: 400.", min=64
    )
    max_header_size: int = _opt(8190, "Longest single header line in bytes; longer: 400.", min=64)
    max_headers: int = _opt(100, "Most header lines in one request; more: 400.", min=1)
    max_body_size: int = _opt(
        100 * 1024 * 1024,
        "Largest request body in bytes (413 before the app reads past it); 0: no limit.",
        min=0,
    )
    max_connections: int = _opt(
        4096, "Open connections on the app port; beyond: 503 and close. 0: no limit.", min=0
    )
    max_requests_in_flight: int = _opt(
        1024,
        "Requests handled at once; beyond: 503 with Retry-After. 0: no limit.",
        min=0,
        flags=("--max-requests-in-flight", "--limit-concurrency"),
    )
    header_timeout: float = _opt(
        30.0, "Seconds a new connection gets to send a complete request head.", min=0
    )
    body_timeout: float = _opt(
        60.0, "Seconds the app may wait for the next piece of a request body.", min=0
    )
    ws_ping_interval: float = _opt(
        20.0,
        "Seconds between WebSocket pings; a peer that does not answer within half of it "
        "is disconnected (0 turns pings off).",
        min=0,
        flags=("--ws-ping-interval",),
    )
    ws_max_message_size: int = _opt(
        16 * 1024 * 1024,
        "Largest WebSocket message accepted, in bytes (close code 1009).",
        min=1,
        flags=("--ws-max-message-size", "--ws-max-size"),
    )


@dataclass(frozen=True)
class AdminConfig:
    host: str = _opt(
        "0.0.0.0",
        "Address the admin port (probes, preStop, metrics) binds to.",
        flags=("--admin-host",),
    )
    port: int = _opt(
        8081, "Admin port (0 picks a free port).", min=0, max=65535, flags=("--admin-port",)
    )
    token: str = _opt(
        "",
        "Bearer token every caller of `/prestop` must present (at least 16 bytes, e.g. "
        "`openssl rand -hex 32`); prefer `token_file` or the environment so it can come "
        "from a Secret. Never printed.",
        secret=True,
    )
    token_file: str = _opt("", "File holding the admin token (a mounted Secret).", path=True)
    allow_from: str = _opt(
        "",
        "Comma-separated addresses/CIDRs allowed to call `/prestop`; empty: any address, "
        "subject to the token. Loopback is not implied: list it if the exec hook needs it.",
    )
    # In a service mesh the pod's proxy delivers inbound connections from loopback
    # (Istio's Envoy from 127.0.0.6, older Istio and Linkerd from 127.0.0.1), so
    # "loopback" would include every workload that can reach the admin port.
    trust_loopback: bool = _opt(
        False,
        "Let callers on loopback use `/prestop` without the token or allow-list. Off by "
        "default: in a service mesh every inbound connection comes from loopback.",
    )


@dataclass(frozen=True)
class LifespanConfig:
    mode: Literal["auto", "on", "off"] = _opt(
        "auto",
        "`auto`: run lifespan, serve anyway if the app does not support it; "
        "`on`: lifespan must succeed; `off`: never run it.",
        flags=("--lifespan",),
    )
    startup_timeout: float = _opt(
        60.0,
        "Seconds to wait for `lifespan.startup.complete`.",
        min=0,
        flags=("--startup-timeout",),
    )
    shutdown_timeout: float = _opt(
        30.0,
        "Seconds to wait for `lifespan.shutdown.complete`.",
        min=0,
        flags=("--shutdown-timeout",),
    )
    startup_attempts: int = _opt(1, "Lifespan startup attempts before exiting with code 3.", min=1)
    retry_backoff: float = _opt(
        1.0, "Seconds before the second attempt; doubles after each failure.", min=0
    )
    retry_backoff_max: float = _opt(30.0, "Upper bound of the retry backoff, in seconds.", min=0)
    # A process that exits a few milliseconds after its startup failed is never scraped;
    # a file that outlives the container (an emptyDir lives as long as the pod) lets the
    # next attempt report every failure before it.
    state_dir: str = _opt(
        "",
        "Directory for a small file of startup attempts and failures that outlives the "
        "container (an emptyDir in Kubernetes), so failure counters keep counting across a "
        "crash loop; empty: nothing is kept.",
    )
    failure_linger: float = _opt(
        0.0,
        "Seconds the admin port stays up after a fatal startup failure (and after a stop "
        "that cut requests) before the process exits, so Prometheus can scrape what "
        "happened; set it above the scrape interval. 0: exit at once.",
        min=0,
    )


@dataclass(frozen=True)
class ShutdownConfig:
    drain_delay: float = _opt(
        5.0,
        "Seconds to keep serving after being marked not ready, while load balancers "
        "remove the pod from their endpoints.",
        min=0,
        flags=("--drain-delay",),
    )
    graceful_timeout: float = _opt(
        20.0,
        "Seconds in-flight requests get, after the drain delay, to finish before they are cut.",
        min=0,
        flags=("--graceful-timeout", "--timeout-graceful-shutdown"),
    )
    drain_mode: Literal["idle", "fixed"] = _opt(
        "idle",
        "`idle`: after the drain delay keep the listener open until no request is in "
        "flight (within graceful_timeout); `fixed`: close it when the drain delay ends.",
    )
    websocket_close_code: int = _opt(
        1012,
        "Close code sent to open WebSockets when the listener closes (1012: service restart).",
        min=1000,
        max=4999,
    )


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error", "critical"] = _opt(
        "info", "Log level.", flags=("--log-level",)
    )
    format: Literal["text", "json"] = _opt(
        "text", "`text` or `json` (one object per line).", flags=("--log-format",)
    )
    access_log: bool = _opt(
        False,
        "Log one line per HTTP request, with a request id (`x-request-id`, taken from the "
        "request or generated, and returned in the response).",
        flags=("--access-log",),
    )
    access_log_format: str = _opt(
        ACCESS_LOG_FORMAT,
        "The text access log line, with `%(field)s` placeholders for the fields of the "
        "JSON access log (docs/observability.md) and `request_line`, `reason`, `http_version`.",
        flags=("--access-log-format",),
    )


@dataclass(frozen=True)
class MetricsConfig:
    requests: bool = _opt(
        True, "Record per-request metrics (count, duration histogram, in-flight)."
    )
    max_routes: int = _opt(
        100,
        "Distinct route labels on request metrics; requests on routes beyond them count "
        "under the route `other`, so the number of series stays bounded.",
        min=1,
    )
    names: Literal["sidecar", "opentelemetry"] = _opt(
        "sidecar",
        "`sidecar`: `sidecar_http_requests_total` and `sidecar_http_request_duration_seconds`; "
        "`opentelemetry`: `http_server_request_duration_seconds` with the OpenTelemetry HTTP "
        "semantic-convention labels instead.",
    )


@dataclass(frozen=True)
class HealthCheckConfig:
    """One entry of ``health.checks``: a check the sidecar runs for the app."""

    name: str = field(metadata={"doc": "Unique check name; `/readyz/<name>` asks for it alone."})
    type: Literal["tcp", "http", "callable"] = field(
        metadata={
            "doc": "`tcp` (connect to host:port), `http` (GET url, 200-399 passes) or "
            "`callable` (call target; raising or returning False fails)."
        }
    )
    probe: Literal["readiness", "liveness"] = _opt(
        "readiness", "The probe the check belongs to: `readiness` or `liveness`."
    )
    host: str = _opt("", "Host to connect to.", types=("tcp",))
    port: int = _opt(0, "Port to connect to.", min=1, max=65535, types=("tcp",))
    url: str = _opt("", "URL to GET, `http://` or `https://`.", types=("http",))
    target: str = _opt(
        "", "The function as `module:attribute`, sync or async.", types=("callable",)
    )
    timeout: float = _opt(
        CHECK_TIMEOUT, "Seconds one run may take before it counts as failed.", above=0
    )
    interval: float = _opt(
        CHECK_INTERVAL, "Seconds between the end of one run and the next.", above=0
    )
    failure_threshold: int = _opt(
        CHECK_FAILURE_THRESHOLD,
        "Consecutive failed runs before the check counts as failed.",
        min=1,
    )
    severity: Literal["critical", "warning"] = _opt(
        "critical", "`critical` fails the probe; `warning` is reported but never fails it."
    )
    tags: tuple[str, ...] = _opt((), "Labels for grouping; `?exclude=tag:<tag>` skips them.")


@dataclass(frozen=True)
class HealthConfig:
    # The kubelet gives up on a probe after 1 s (timeoutSeconds). A loop this far behind
    # would have failed an in-app probe; the sidecar keeps that verdict and answers in time.
    ready_max_loop_lag: float = _opt(
        1.0,
        "Readiness fails while the app's event loop is this many seconds behind (0: never).",
        min=0,
    )
    # Stuck, not busy: with the kubelet's defaults (period 10 s, failureThreshold 3) a
    # restart follows 20-30 s after this, so the loop has been blocked for about a minute.
    live_max_loop_lag: float = _opt(
        30.0,
        "Liveness fails once startup completed and the event loop is this many seconds "
        "behind (0: never).",
        min=0,
    )
    heartbeat_interval: float = _opt(
        0.1, "Seconds between heartbeats on the app's event loop (0: no loop monitoring).", min=0
    )
    stack_dump_after: float = _opt(
        1.0, "Log the app thread's stack when the loop is blocked this long (0: never).", min=0
    )
    stack_dump_interval: float = _opt(60.0, "At most one stack dump per this many seconds.", min=0)
    checks: tuple[HealthCheckConfig, ...] = _opt(
        (), "Checks the sidecar runs: a list of mappings (docs/health.md)."
    )


@dataclass(frozen=True)
class ReloadConfig:
    """Development only: restart the app when its files change."""

    enabled: bool = _opt(
        False,
        "Restart the app when a watched file changes (development only; one worker).",
        flags=("--reload",),
    )
    dirs: str = _opt(
        "",
        "Comma-separated directories to watch; empty: the current directory.",
        flags=("--reload-dir",),
        repeatable=True,
    )
    includes: str = _opt(
        "*.py",
        "Comma-separated glob patterns of the files whose changes restart the app.",
        flags=("--reload-include",),
        repeatable=True,
    )
    excludes: str = _opt(
        ".*, .py[cod], .sw.*, ~*",
        "Comma-separated glob patterns (or directories) whose changes are ignored.",
        flags=("--reload-exclude",),
        repeatable=True,
    )
    delay: float = _opt(
        0.25,
        "Seconds to wait after a change for more changes before restarting.",
        min=0,
        flags=("--reload-delay",),
    )


@dataclass(frozen=True)
class Config:
    app: AppConfig = field(default_factory=AppConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    lifespan: LifespanConfig = field(default_factory=LifespanConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)

    def to_document(self) -> dict[str, dict[str, Any]]:
        """The whole configuration as plain data that ``load_config(document=)`` reads.

        Unlike ``to_dict`` it keeps secrets: it is for handing the configuration to
        another process of the sidecar, never for printing.
        """
        document = dataclasses.asdict(self)
        document["health"]["checks"] = [_check_to_dict(c, redact=False) for c in self.health.checks]
        return document

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the configuration as plain nested dicts (for YAML output).

        Secrets (keys declared ``secret``) that are set read ``<redacted>``, and so do
        passwords in the checks' URLs.
        """
        document = dataclasses.asdict(self)
        for section in dataclasses.fields(self):
            values = document[section.name]
            for key in dataclasses.fields(getattr(self, section.name)):
                if key.metadata.get("secret") and values[key.name]:
                    values[key.name] = REDACTED
        # Lists, not tuples (YAML's safe dumper has no tuples), and per check only the
        # keys that apply to its type, so the output loads back without errors.
        document["health"]["checks"] = [_check_to_dict(c, redact=True) for c in self.health.checks]
        return document


def _check_to_dict(check: HealthCheckConfig, *, redact: bool) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for f in dataclasses.fields(HealthCheckConfig):
        types = f.metadata.get("types")
        if types is None or check.type in types:
            value = getattr(check, f.name)
            if redact and f.name == "url":
                value = redact_url(value)
            document[f.name] = list(value) if isinstance(value, tuple) else value
    return document
