"""The one configuration object: defaults < YAML file < environment < command-line flags.

Every section is a frozen dataclass. Field metadata carries the documentation and the
bounds, so validation, ``check-config`` output and the README table agree by construction.
Durations are in seconds (fractions allowed) and say so in their ``_timeout``/``_delay`` names.
Problems are collected across all layers and raised together as one ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .addresses import parse_networks
from .errors import ConfigError

ENV_PREFIX = "SIDECAR_"

# Check names appear in URLs (/readyz/<check>) and as metric label values, so they are
# restricted to characters that need no escaping in either.
CHECK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
CHECK_NAME_FORM = "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
# Checks the sidecar always reports; a configured or registered check may not reuse them.
BUILTIN_CHECKS = frozenset({"ping", "startup", "draining", "lifespan", "event-loop"})
# Defaults of a health check, configured or registered by the app. A dependency that
# needs more than a second to answer a trivial request is not serving; every 5 s is half
# the kubelet's default probe period (10 s), so each probe sees a fresh result; one failed
# run is a blip, two in a row (5-10 s) an outage.
CHECK_TIMEOUT = 1.0
CHECK_INTERVAL = 5.0
CHECK_FAILURE_THRESHOLD = 2
_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _opt(default: Any, doc: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"doc": doc, **bounds})


@dataclass(frozen=True)
class AppConfig:
    target: str = _opt("", "The ASGI app as `module:attribute` (attribute may be dotted).")
    factory: bool = _opt(False, "Call the target with no arguments to get the app.")
    app_dir: str = _opt(".", "Directory put first on `sys.path` before importing the target.")


@dataclass(frozen=True)
class ServerConfig:
    host: str = _opt("0.0.0.0", "Address the app port binds to.")
    port: int = _opt(8000, "App port (0 picks a free port).", min=0, max=65535)
    root_path: str = _opt("", "ASGI `root_path` for apps mounted below a path prefix.")
    backlog: int = _opt(2048, "Listen backlog of the app socket.", min=1)
    # Longer than the idle timeout of common load balancers (60 s), so the proxy, not the
    # sidecar, closes idle upstream connections; otherwise a proxy can reuse a connection
    # the sidecar is closing and answer its client with a 502.
    keep_alive_timeout: float = _opt(
        75.0, "Seconds an idle keep-alive connection stays open.", min=0
    )
    loop: Literal["auto", "asyncio", "uvloop"] = _opt(
        "auto", "Event loop for the app: `auto` uses uvloop when it is installed."
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
    )
    tls_certfile: str = _opt(
        "", "PEM certificate (chain) for TLS on the app port; empty: plain HTTP."
    )
    tls_keyfile: str = _opt("", "PEM private key for `tls_certfile`.")
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
        1024, "Requests handled at once; beyond: 503 with Retry-After. 0: no limit.", min=0
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
    )
    ws_max_message_size: int = _opt(
        16 * 1024 * 1024, "Largest WebSocket message accepted, in bytes (close code 1009).", min=1
    )


@dataclass(frozen=True)
class AdminConfig:
    host: str = _opt("0.0.0.0", "Address the admin port (probes, preStop, metrics) binds to.")
    port: int = _opt(8081, "Admin port (0 picks a free port).", min=0, max=65535)
    token: str = _opt(
        "",
        "Bearer token required by `/prestop` (from anywhere but loopback); prefer "
        "`token_file` or the environment so it can come from a Secret.",
    )
    token_file: str = _opt("", "File holding the admin token (a mounted Secret).")
    allow_from: str = _opt(
        "",
        "Comma-separated addresses/CIDRs allowed to call `/prestop` (loopback always is); "
        "empty: any address, subject to the token.",
    )


@dataclass(frozen=True)
class LifespanConfig:
    mode: Literal["auto", "on", "off"] = _opt(
        "auto",
        "`auto`: run lifespan, serve anyway if the app does not support it; "
        "`on`: lifespan must succeed; `off`: never run it.",
    )
    startup_timeout: float = _opt(60.0, "Seconds to wait for `lifespan.startup.complete`.", min=0)
    shutdown_timeout: float = _opt(30.0, "Seconds to wait for `lifespan.shutdown.complete`.", min=0)
    startup_attempts: int = _opt(1, "Lifespan startup attempts before exiting with code 3.", min=1)
    retry_backoff: float = _opt(
        1.0, "Seconds before the second attempt; doubles after each failure.", min=0
    )
    retry_backoff_max: float = _opt(30.0, "Upper bound of the retry backoff, in seconds.", min=0)


@dataclass(frozen=True)
class ShutdownConfig:
    drain_delay: float = _opt(
        5.0,
        "Seconds to keep serving after being marked not ready, while load balancers "
        "remove the pod from their endpoints.",
        min=0,
    )
    graceful_timeout: float = _opt(
        20.0,
        "Seconds in-flight requests get, after the drain delay, to finish before they are cut.",
        min=0,
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
    level: Literal["debug", "info", "warning", "error", "critical"] = _opt("info", "Log level.")
    format: Literal["text", "json"] = _opt("text", "`text` or `json` (one object per line).")
    access_log: bool = _opt(False, "Log one line per HTTP request.")


@dataclass(frozen=True)
class MetricsConfig:
    requests: bool = _opt(
        True, "Record per-request metrics (count, duration histogram, in-flight)."
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
        (), "Checks the sidecar runs: a list of mappings (see Health checks)."
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

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the configuration as plain nested dicts (for YAML output)."""
        document = dataclasses.asdict(self)
        # Lists, not tuples (YAML's safe dumper has no tuples), and per check only the
        # keys that apply to its type, so the output loads back without errors.
        document["health"]["checks"] = [_check_to_dict(c) for c in self.health.checks]
        return document


def _check_to_dict(check: HealthCheckConfig) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for f in dataclasses.fields(HealthCheckConfig):
        types = f.metadata.get("types")
        if types is None or check.type in types:
            value = getattr(check, f.name)
            document[f.name] = list(value) if isinstance(value, tuple) else value
    return document


SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
}


@dataclass(frozen=True)
class KeySpec:
    """One configuration key: where it lives, its type, default and documentation."""

    section: str
    name: str
    type: Any
    default: Any
    doc: str
    bounds: Mapping[str, Any]

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"

    @property
    def expected(self) -> str:
        """Describe the accepted form, for error messages and docs."""
        if typing.get_origin(self.type) is Literal:
            return "one of " + ", ".join(repr(c) for c in typing.get_args(self.type))
        if self.type is bool:
            return "a boolean (true or false)"
        if self.type is int:
            low, high = self.bounds.get("min"), self.bounds.get("max")
            if low is not None and high is not None:
                return f"an integer from {low} to {high}"
            return f"an integer >= {low}" if low is not None else "an integer"
        if self.type is float:
            if self.bounds.get("above") is not None:
                return (
                    f"a number of seconds > {self.bounds['above']:g} (fractions allowed, e.g. 0.5)"
                )
            return "a number of seconds >= 0 (fractions allowed, e.g. 2.5)"
        if self.type == tuple[str, ...]:
            return f"a list of names ({CHECK_NAME_FORM})"
        if self.type == tuple[HealthCheckConfig, ...]:
            return (
                "a list of check mappings, e.g. "
                "[{name: db, type: tcp, host: db.internal, port: 5432}]"
            )
        return "a string"


def _field_specs(section: str, cls: type[Any]) -> list[KeySpec]:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        bounds = {k: v for k, v in f.metadata.items() if k != "doc"}
        specs.append(KeySpec(section, f.name, hints[f.name], f.default, f.metadata["doc"], bounds))
    return specs


def key_specs() -> list[KeySpec]:
    """List every configuration key in declaration order."""
    return [spec for section, cls in SECTIONS.items() for spec in _field_specs(section, cls)]


def check_key_specs() -> list[KeySpec]:
    """List the keys of one ``health.checks`` entry (section ``health.checks[]``)."""
    return _field_specs("health.checks[]", HealthCheckConfig)


_SPECS = {spec.path: spec for spec in key_specs()}
_ENV_NAMES = {spec.env: spec for spec in _SPECS.values()}
_CHECK_SPECS = {spec.name: spec for spec in check_key_specs()}


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Invalid(Exception):
    """A value does not fit its key; ``problems`` replaces the generic message if given."""

    def __init__(self, problems: typing.Sequence[str] = ()) -> None:
        super().__init__()
        self.problems = list(problems)


def _coerce(spec: KeySpec, value: Any, *, from_text: bool) -> Any:
    """Convert ``value`` to the key's type or raise ``_Invalid``.

    ``from_text`` is set for environment variables and flags, whose values are strings
    that still need parsing; YAML values arrive already typed and must match.
    """
    kind = spec.type
    if kind == tuple[HealthCheckConfig, ...]:
        return _coerce_checks(spec, value, from_text=from_text)
    if kind == tuple[str, ...]:
        if from_text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, str) and CHECK_NAME.fullmatch(item) for item in value
        ):
            raise _Invalid
        return tuple(value)
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        text = value.strip().lower() if from_text and isinstance(value, str) else value
        if text not in choices:
            raise _Invalid
        return text
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        raise _Invalid
    if kind is int or kind is float:
        if isinstance(value, bool):
            raise _Invalid
        if from_text and isinstance(value, str):
            try:
                value = int(value) if kind is int else float(value)
            except ValueError:
                raise _Invalid from None
        if kind is int and not isinstance(value, int):
            raise _Invalid
        if kind is float:
            if (
                not isinstance(value, int | float)
                or value != value
                or value
                in (
                    float("inf"),
                    float("-inf"),
                )
            ):
                raise _Invalid
            value = float(value)
        low, high = spec.bounds.get("min"), spec.bounds.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            raise _Invalid
        above = spec.bounds.get("above")
        if above is not None and value <= above:
            raise _Invalid
        return value
    if kind is str:
        if not isinstance(value, str):
            raise _Invalid
        return value
    raise TypeError(f"unsupported config type {kind!r} for {spec.path}")  # pragma: no cover


def _coerce_checks(spec: KeySpec, value: Any, *, from_text: bool) -> tuple[HealthCheckConfig, ...]:
    """Validate ``health.checks``; every problem names its item and key, e.g. ``[1].timeout``."""
    if from_text and isinstance(value, str):
        # From the environment the list is written in YAML (or JSON, a subset of it).
        import yaml  # imported when needed: it costs startup time and memory

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise _Invalid from None
        if value is None:
            value = []
    if not isinstance(value, list):
        raise _Invalid
    problems: list[str] = []
    checks: list[HealthCheckConfig] = []
    first_use: dict[str, str] = {}
    for index, item in enumerate(value):
        where = f"{spec.path}[{index}]"
        count = len(problems)
        values = _check_values(where, item, problems)
        name = values.get("name")
        if isinstance(name, str):
            if name in first_use:
                problems.append(
                    f"duplicate check name {name!r} at {where}.name (also at "
                    f"{first_use[name]}.name); names are unique across readiness and liveness"
                )
            first_use.setdefault(name, where)
        if len(problems) == count:
            checks.append(HealthCheckConfig(**values))
    if problems:
        raise _Invalid(problems)
    return tuple(checks)


def _check_values(where: str, item: Any, problems: list[str]) -> dict[str, Any]:
    """Coerce one check's keys, appending every problem found; return the valid values."""
    if not isinstance(item, dict):
        problems.append(
            f"invalid value {item!r} for {where}; expected a mapping with at least "
            "name and type, e.g. {name: db, type: tcp, host: db.internal, port: 5432}"
        )
        return {}
    values: dict[str, Any] = {}
    for key, raw in item.items():
        spec = _CHECK_SPECS.get(str(key))
        if spec is None:
            problems.append(
                f"unknown key {where}.{key}{_did_you_mean(str(key), _CHECK_SPECS)}; "
                f"keys of a check: {', '.join(_CHECK_SPECS)}"
            )
            continue
        located = dataclasses.replace(spec, section=where)
        try:
            values[spec.name] = _coerce(located, raw, from_text=False)
        except _Invalid:
            problems.append(
                f"invalid value {raw!r} for {located.path}; expected {located.expected}"
            )
    for required in ("name", "type"):
        if required not in item:
            problems.append(f"missing key {where}.{required}; every check needs a name and a type")
    name = values.get("name")
    if name is not None and not CHECK_NAME.fullmatch(name):
        problems.append(f"invalid value {name!r} for {where}.name; expected {CHECK_NAME_FORM}")
    elif name in BUILTIN_CHECKS:
        problems.append(
            f"invalid value {name!r} for {where}.name; it is a built-in check "
            f"({', '.join(sorted(BUILTIN_CHECKS))}); choose another name"
        )
    kind = values.get("type")
    if kind is not None:
        for key in item:
            types = _CHECK_SPECS[key].bounds.get("types") if key in _CHECK_SPECS else None
            if types is not None and kind not in types:
                problems.append(
                    f"key {where}.{key} does not apply to type {kind!r} "
                    f"(it belongs to type {types[0]!r})"
                )
        required_by_type = {"tcp": ("host", "port"), "http": ("url",), "callable": ("target",)}
        for key in required_by_type[kind]:
            if key not in item:
                problems.append(f"missing key {where}.{key} (required for type {kind!r})")
    url = values.get("url")
    if url is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
        problems.append(
            f"invalid value {url!r} for {where}.url; expected an http:// or https:// URL, "
            "e.g. http://127.0.0.1:8080/healthz"
        )
    target = values.get("target")
    if target is not None and not _TARGET.fullmatch(target):
        problems.append(
            f"invalid value {target!r} for {where}.target; expected the form "
            "`module:attribute`, e.g. `myproject.health:check_cache`"
        )
    host = values.get("host")
    if host is not None and not host.strip():
        problems.append(f"invalid value {host!r} for {where}.host; expected a host name or address")
    return values


class _Layer:
    """Collect validated values and problems from one source (file, env, flags)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        self.values: dict[str, Any] = {}

    def put(self, spec: KeySpec, value: Any, *, from_text: bool, where: str) -> None:
        try:
            self.values[spec.path] = _coerce(spec, value, from_text=from_text)
        except _Invalid as exc:
            if exc.problems:
                self.problems.extend(f"{where}: {problem}" for problem in exc.problems)
            else:
                self.problems.append(
                    f"{where}: invalid value {value!r} for {spec.path}; expected {spec.expected}"
                )


def _file_layer(path: Path, problems: list[str]) -> _Layer:
    layer = _Layer(str(path), problems)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{path}: cannot read config file: {exc.strerror or exc}")
        return layer
    import yaml  # imported when needed: it costs startup time and memory

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problems.append(f"{path}: not valid YAML: {exc}")
        return layer
    if data is None:
        return layer
    if not isinstance(data, dict):
        problems.append(
            f"{path}: the top level must be a mapping of sections "
            f"({', '.join(SECTIONS)}), got {type(data).__name__}"
        )
        return layer
    for section, body in data.items():
        if section not in SECTIONS:
            problems.append(
                f"{path}: unknown section {section!r}{_did_you_mean(str(section), SECTIONS)}; "
                f"expected one of: {', '.join(SECTIONS)}"
            )
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            problems.append(
                f"{path}: section {section!r} must be a mapping of keys, "
                f"got {type(body).__name__} {body!r}"
            )
            continue
        names = [s.name for s in _SPECS.values() if s.section == section]
        for key, value in body.items():
            spec = _SPECS.get(f"{section}.{key}")
            if spec is None:
                problems.append(
                    f"{path}: unknown key {section}.{key}{_did_you_mean(str(key), names)}; "
                    f"keys of {section!r}: {', '.join(names)}"
                )
                continue
            layer.put(spec, value, from_text=False, where=str(path))
    return layer


def _env_layer(env: Mapping[str, str], problems: list[str]) -> _Layer:
    layer = _Layer("environment", problems)
    section_prefixes = {f"{ENV_PREFIX}{s.upper()}_": s for s in SECTIONS}
    for name, value in env.items():
        spec = _ENV_NAMES.get(name)
        if spec is not None:
            layer.put(spec, value, from_text=True, where=f"environment {name}")
            continue
        # Only a name inside one of our sections is a typo; other SIDECAR_* variables
        # (for instance Kubernetes service links of a Service named "sidecar") are not ours.
        for prefix in section_prefixes:
            if name.startswith(prefix):
                hint = _did_you_mean(name, _ENV_NAMES)
                if value.startswith(("tcp://", "udp://")) or name.endswith(
                    ("_SERVICE_HOST", "_SERVICE_PORT")
                ):
                    hint += (
                        "; this looks like a Kubernetes service link variable: set "
                        "enableServiceLinks: false on the pod or rename the Service"
                    )
                problems.append(f"environment {name}: unknown setting{hint}")
                break
    return layer


def _override_layer(overrides: Mapping[str, Any], problems: list[str]) -> _Layer:
    layer = _Layer("command line", problems)
    for path, value in overrides.items():
        if value is None:
            continue
        spec = _SPECS.get(path)
        if spec is None:  # a programming error in the CLI, not user input
            raise KeyError(f"unknown config key {path!r}")
        layer.put(spec, value, from_text=isinstance(value, str), where="command line")
    return layer


def _check_ports(config: Config, problems: list[str]) -> None:
    app, admin = config.server, config.admin
    if app.port == 0 or admin.port == 0 or app.port != admin.port:
        return
    if _hosts_overlap(app.host, admin.host):
        problems.append(
            f"server.port and admin.port are both {app.port} on overlapping addresses "
            f"({app.host!r} and {admin.host!r}); give the admin port its own number, e.g. 8081"
        )


def _hosts_overlap(a: str, b: str) -> bool:
    wildcard = {"", "0.0.0.0", "::", "*"}
    if a in wildcard or b in wildcard or a == b:
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _check_server(config: Config, problems: list[str]) -> None:
    server = config.server
    try:
        parse_networks(server.trusted_proxies)
    except ValueError as exc:
        problems.append(
            f"invalid address {str(exc)!r} in server.trusted_proxies "
            f"({server.trusted_proxies!r}); expected '*' or comma-separated IP addresses "
            "or CIDRs, e.g. '10.0.0.0/8, 127.0.0.1'"
        )
    if bool(server.tls_certfile) != bool(server.tls_keyfile):
        problems.append(
            "server.tls_certfile and server.tls_keyfile must be set together "
            f"(got certfile={server.tls_certfile!r}, keyfile={server.tls_keyfile!r})"
        )
    for key in ("tls_certfile", "tls_keyfile"):
        value = getattr(server, key)
        if value and not Path(value).is_file():
            problems.append(f"server.{key}: no such file {value!r}; expected a PEM file")


def _check_admin(config: Config, problems: list[str]) -> None:
    admin = config.admin
    if admin.token and admin.token_file:
        problems.append(
            "admin.token and admin.token_file are both set; expected one of them "
            "(token_file for a mounted Secret)"
        )
    if admin.token_file and not Path(admin.token_file).is_file():
        problems.append(
            f"admin.token_file: no such file {admin.token_file!r}; "
            "expected a file holding the token"
        )
    try:
        parse_networks(admin.allow_from)
    except ValueError as exc:
        problems.append(
            f"invalid address {str(exc)!r} in admin.allow_from ({admin.allow_from!r}); "
            "expected comma-separated IP addresses or CIDRs, e.g. '10.0.0.0/8'"
        )


def _check_coherence(config: Config, problems: list[str]) -> None:
    if config.lifespan.retry_backoff > config.lifespan.retry_backoff_max:
        problems.append(
            f"lifespan.retry_backoff ({config.lifespan.retry_backoff}) is larger than "
            f"lifespan.retry_backoff_max ({config.lifespan.retry_backoff_max}); "
            "expected retry_backoff <= retry_backoff_max"
        )
    health = config.health
    if 0 < health.live_max_loop_lag < health.ready_max_loop_lag:
        problems.append(
            f"health.live_max_loop_lag ({health.live_max_loop_lag:g}) is smaller than "
            f"health.ready_max_loop_lag ({health.ready_max_loop_lag:g}); expected "
            "live_max_loop_lag >= ready_max_loop_lag (a restart for a stall that readiness "
            "tolerates), or 0 to turn the liveness check off"
        )
    root = config.server.root_path
    if root and (not root.startswith("/") or root.endswith("/")):
        problems.append(
            f"invalid value {root!r} for server.root_path; expected an empty string or a "
            "path that starts with '/' and does not end with '/', e.g. '/api'"
        )


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration; raise ``ConfigError`` listing every problem.

    ``overrides`` maps key paths (``"server.port"``) to flag values; ``None`` means unset.
    The environment is passed in, never read here, so callers and tests control it.
    """
    problems: list[str] = []
    layers = []
    if path is not None:
        layers.append(_file_layer(Path(path), problems))
    layers.append(_env_layer(env or {}, problems))
    layers.append(_override_layer(overrides or {}, problems))

    merged: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for layer in layers:
        for key_path, value in layer.values.items():
            section, name = key_path.split(".", 1)
            merged[section][name] = value
    if problems:
        raise ConfigError(problems)

    config = Config(**{s: SECTIONS[s](**values) for s, values in merged.items()})
    _check_ports(config, problems)
    _check_coherence(config, problems)
    _check_server(config, problems)
    _check_admin(config, problems)
    if problems:
        raise ConfigError(problems)
    return config


def require_target(config: Config) -> None:
    """Raise ``ConfigError`` when no app target is configured."""
    if not config.app.target:
        raise ConfigError(
            [
                "no app given: pass APP as `module:attribute` (e.g. `myproject.main:app`), "
                f"or set app.target in the config file or {_SPECS['app.target'].env}"
            ]
        )


def dump_config(config: Config) -> str:
    """Render the effective configuration as YAML."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
