"""Rules that span keys, checked once every value is valid on its own.

The app and admin ports must not collide; files the server needs must exist; a token is
neither a placeholder nor too short, and its file can be read; reload cannot run with
workers; the workers' settings agree; timeouts and lag limits are ordered. Each problem
names the keys, the values and what is expected.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ..addresses import parse_networks
from ..errors import ConfigError
from .schema import ACCESS_LOG_FIELDS, ACCESS_LOG_TEXT_FIELDS, Config


def check_rules(config: Config, problems: list[str]) -> None:
    """Append a message to ``problems`` for each rule ``config`` breaks."""
    _check_ports(config, problems)
    _check_coherence(config, problems)
    _check_workers(config, problems)
    _check_server(config, problems)
    _check_admin(config, problems)
    _check_logging(config, problems)
    _check_reload(config, problems)


def _check_ports(config: Config, problems: list[str]) -> None:
    app, admin = config.server, config.admin
    if app.uds or app.fd >= 0:
        return  # the app port is not a TCP port of ours
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
    if server.uds and server.fd >= 0:
        problems.append(
            f"server.uds ({server.uds!r}) and server.fd ({server.fd}) are both set; expected "
            "one of them (or neither, to bind server.host and server.port)"
        )
    if server.uds and not Path(server.uds).parent.is_dir():
        problems.append(
            f"server.uds: no directory {str(Path(server.uds).parent)!r} for the socket "
            f"{server.uds!r}; expected a path in an existing directory"
        )


def _check_logging(config: Config, problems: list[str]) -> None:
    form = config.logging.access_log_format
    fields = {**ACCESS_LOG_FIELDS, **ACCESS_LOG_TEXT_FIELDS}
    try:
        form % fields
    except KeyError as exc:
        problems.append(
            f"invalid value {form!r} for logging.access_log_format: unknown field {exc}; "
            f"expected %(field)s placeholders of: {', '.join(fields)}"
        )
    except (ValueError, TypeError) as exc:
        problems.append(
            f"invalid value {form!r} for logging.access_log_format: {exc}; expected "
            "printf-style placeholders such as %(method)s, %(status)d, %(duration_ms).1f"
        )


def _check_reload(config: Config, problems: list[str]) -> None:
    reload = config.reload
    if not reload.enabled:
        return
    if config.server.workers > 1:
        problems.append(
            f"reload.enabled (--reload) cannot be combined with server.workers "
            f"({config.server.workers}); expected server.workers 1 for development with reload"
        )
    for directory in _split(reload.dirs):
        if not Path(directory).is_dir():
            problems.append(
                f"reload.dirs: no such directory {directory!r}; expected directories to watch"
            )


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _check_admin(config: Config, problems: list[str]) -> None:
    admin = config.admin
    if admin.token and admin.token_file:
        problems.append(
            "admin.token and admin.token_file are both set; expected one of them "
            "(token_file for a mounted Secret)"
        )
    if admin.token:
        problem = token_problem(admin.token, "admin.token")
        if problem is not None:
            problems.append(problem)
    if admin.token_file:
        if not Path(admin.token_file).is_file():
            problems.append(
                f"admin.token_file: no such file {admin.token_file!r}; "
                "expected a file holding the token"
            )
        else:
            try:
                read_token_file(admin.token_file)
            except ConfigError as exc:
                problems.extend(exc.problems)
    try:
        parse_networks(admin.allow_from)
    except ValueError as exc:
        problems.append(
            f"invalid address {str(exc)!r} in admin.allow_from ({admin.allow_from!r}); "
            "expected comma-separated IP addresses or CIDRs, e.g. '10.0.0.0/8'"
        )


# Placeholders that example files and tutorials ship; a token containing one is public.
_PLACEHOLDERS = ("replace-me", "replace_me", "changeme", "change-me", "example", "xxxxxxxx")
TOKEN_MIN_BYTES = 16
_TOKEN_ADVICE = "generate one with `openssl rand -hex 32`"


def token_problem(token: str, where: str) -> str | None:
    """Why ``token`` is no admin token (a placeholder, too short), or ``None``.

    The message names where it came from, never the token itself.
    """
    lowered = token.lower()
    if any(placeholder in lowered for placeholder in _PLACEHOLDERS):
        return (
            f"{where} is a placeholder from an example (anyone who read it knows it); "
            f"{_TOKEN_ADVICE}"
        )
    size = len(token.encode("utf-8"))
    if size < TOKEN_MIN_BYTES:
        return (
            f"{where} is too short to be a secret ({size} bytes; expected at least "
            f"{TOKEN_MIN_BYTES}); {_TOKEN_ADVICE}"
        )
    return None


def read_token_file(path: str) -> str:
    """The token in ``path`` (surrounding whitespace removed); ``ConfigError`` if unusable."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError([f"admin.token_file: cannot read {path!r}: {reason}"]) from exc
    if not token:
        raise ConfigError([f"admin.token_file: {path!r} is empty; {_TOKEN_ADVICE}"])
    problem = token_problem(token, f"the token in admin.token_file {path!r}")
    if problem is not None:
        raise ConfigError([problem])
    return token


def _check_workers(config: Config, problems: list[str]) -> None:
    server = config.server
    if server.min_ready_workers > server.workers:
        problems.append(
            f"server.min_ready_workers ({server.min_ready_workers}) is more than "
            f"server.workers ({server.workers}); expected at most {server.workers}, or 0 "
            "for all of them"
        )
    if server.workers > 1 and server.fd >= 0:
        problems.append(
            f"server.fd ({server.fd}) cannot be combined with server.workers "
            f"({server.workers}): the supervisor binds the app port itself and shares it; "
            "expected server.host and server.port"
        )
    if server.workers > 1 and server.uds:
        problems.append(
            f"server.uds ({server.uds!r}) cannot be combined with server.workers "
            f"({server.workers}); expected server.host and server.port"
        )
    for key in ("max_requests", "max_worker_memory"):
        if getattr(server, key) and server.workers == 1:
            problems.append(
                f"server.{key} ({getattr(server, key)}) replaces worker processes, but "
                "server.workers is 1 (one process, nothing replaces it); set "
                "server.workers to 2 or more, or leave it at 0"
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
