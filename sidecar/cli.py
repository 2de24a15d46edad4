"""The ``sidecar`` command line; the one place that turns errors into exit codes.

Exit codes: 0 clean stop, 1 runtime or internal error (for instance a port that cannot
be bound), 2 usage or configuration error, 3 the app failed to start (import or
lifespan startup).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from ._version import __version__
from .config import Config, dump_config, load_config, require_target
from .errors import AppLoadError, BindError, ConfigError, LifespanError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3

# Flag -> config key. Values stay strings so the config layer parses and reports them
# with the same messages as the file and the environment.
_FLAGS: dict[str, tuple[str, str]] = {
    "host": ("server.host", "App port bind address [server.host]."),
    "port": ("server.port", "App port [server.port]."),
    "root_path": ("server.root_path", "ASGI root_path [server.root_path]."),
    "admin_host": ("admin.host", "Admin port bind address [admin.host]."),
    "admin_port": ("admin.port", "Admin port [admin.port]."),
    "lifespan": ("lifespan.mode", "auto, on or off [lifespan.mode]."),
    "startup_timeout": ("lifespan.startup_timeout", "Seconds [lifespan.startup_timeout]."),
    "shutdown_timeout": ("lifespan.shutdown_timeout", "Seconds [lifespan.shutdown_timeout]."),
    "drain_delay": ("shutdown.drain_delay", "Seconds [shutdown.drain_delay]."),
    "graceful_timeout": ("shutdown.graceful_timeout", "Seconds [shutdown.graceful_timeout]."),
    "log_level": ("logging.level", "debug, info, warning, error [logging.level]."),
    "log_format": ("logging.format", "text or json [logging.format]."),
}

logger = logging.getLogger("sidecar")


def _config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add APP, --config and the override flags shared by ``run`` and ``check-config``."""

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        return command(**kwargs)

    decorated: Callable[..., Any] = wrapper
    for name, (_, help_text) in reversed(_FLAGS.items()):
        flag = "--" + name.replace("_", "-")
        decorated = click.option(flag, name, type=str, default=None, help=help_text)(decorated)
    decorated = click.option(
        "--access-log/--no-access-log", "access_log", default=None, help="[logging.access_log]"
    )(decorated)
    decorated = click.option(
        "--factory/--no-factory",
        "factory",
        default=None,
        help="APP is a function that returns the app [app.factory].",
    )(decorated)
    decorated = click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML config file.",
    )(decorated)
    decorated = click.argument("app", required=False)(decorated)
    return decorated


def _build_config(kwargs: dict[str, Any], *, need_target: bool) -> Config:
    overrides: dict[str, Any] = {key: kwargs.get(name) for name, (key, _) in _FLAGS.items()}
    overrides["app.target"] = kwargs.get("app")
    overrides["app.factory"] = kwargs.get("factory")
    overrides["logging.access_log"] = kwargs.get("access_log")
    config = load_config(kwargs.get("config_path"), env=os.environ, overrides=overrides)
    if need_target:
        require_target(config)
    return config


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"sidecar: {message}", err=True)
    sys.exit(code)


def _fatal(code: int, message: str, *, trace: str = "") -> NoReturn:
    """Log why the run ends (in the configured format) and exit with ``code``."""
    extra: dict[str, Any] = {"event": "exit", "exit_code": code}
    if trace:
        extra["traceback"] = trace
    logger.critical(message, extra=extra)
    sys.exit(code)


def _config_problems(exc: ConfigError) -> NoReturn:
    lines = "\n".join(f"  - {problem}" for problem in exc.problems)
    _fail(EXIT_CONFIG, f"invalid configuration ({len(exc.problems)} problem(s)):\n{lines}")


def _config_or_exit(kwargs: dict[str, Any], *, need_target: bool) -> Config:
    try:
        return _build_config(kwargs, need_target=need_target)
    except ConfigError as exc:
        _config_problems(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="lifespan-sidecar")
def main() -> None:
    """Host an ASGI app for Kubernetes: lifespan, probes, preStop drain, metrics."""


@main.command("run")
@_config_options
def run_command(**kwargs: Any) -> None:
    """Serve APP (`module:attribute`) until SIGTERM or SIGINT."""
    from .logs import configure_logging
    from .runner import run

    config = _config_or_exit(kwargs, need_target=True)
    configure_logging(config.logging)
    # From here on every message before an exit goes through the configured log format.
    try:
        run(config)
    except ConfigError as exc:
        _fatal(EXIT_CONFIG, "; ".join(exc.problems))
    except AppLoadError as exc:
        _fatal(EXIT_STARTUP, str(exc), trace=exc.trace)
    except LifespanError as exc:
        _fatal(EXIT_STARTUP, f"the app failed to start ({exc.reason}): {str(exc).splitlines()[0]}")
    except BindError as exc:
        _fatal(EXIT_ERROR, str(exc))
    except Exception:
        logger.exception("internal error")
        _fatal(EXIT_ERROR, "stopped by an internal error (traceback above)")


@main.command("check-config")
@_config_options
def check_config_command(**kwargs: Any) -> None:
    """Validate the configuration and print the effective values as YAML."""
    config = _config_or_exit(kwargs, need_target=False)
    click.echo(dump_config(config), nl=False)


@main.command("prestop")
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config file (for admin.port).")  # fmt: skip
@click.option("--admin-port", "admin_port", type=str, default=None, help="[admin.port]")
@click.option(
    "--timeout",
    "timeout",
    type=float,
    default=None,
    help="Seconds to wait for the answer [default: shutdown.drain_delay + 5].",
)
def prestop_command(config_path: str | None, admin_port: str | None, timeout: float | None) -> None:
    """Drain the local sidecar before SIGTERM (for an `exec` preStop hook).

    Calls /prestop on the admin port over loopback with the admin token (from the same
    config file, environment and token file as `sidecar run`) and returns when the drain
    delay has passed: exit 0 when drained, 1 when the sidecar could not be reached or
    refused the call, 2 for a configuration error.
    """
    import urllib.error
    import urllib.request

    from .auth import load_token

    try:
        config = load_config(config_path, env=os.environ, overrides={"admin.port": admin_port})
        token = load_token(config.admin)
    except ConfigError as exc:
        _config_problems(exc)
    host = config.admin.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":  # may be bound IPv6-only: reach it over IPv6 loopback
        host = "::1"
    url = f"http://{host}:{config.admin.port}/prestop"
    if ":" in host:
        url = f"http://[{host}]:{config.admin.port}/prestop"
    wait = timeout if timeout is not None else config.shutdown.drain_delay + 5.0
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=wait) as response:
            click.echo(response.read().decode("utf-8", "replace").strip())
    except urllib.error.HTTPError as exc:
        reason = exc.read().decode("utf-8", "replace").strip()
        hint = "" if token else "; no admin token is set here (admin.token, admin.token_file)"
        _fail(EXIT_ERROR, f"{url} refused the drain ({exc.code}): {reason}{hint}")
    except (urllib.error.URLError, OSError) as exc:
        _fail(EXIT_ERROR, f"could not drain via {url}: {exc}")
