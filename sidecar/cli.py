"""The ``sidecar`` command line; the one place that turns errors into exit codes.

Exit codes: 0 clean stop, 1 runtime or internal error (for instance a port that cannot
be bound), 2 usage or configuration error, 3 the app failed to start (import or
lifespan startup).

The override flags are generated from the configuration schema: every key that declares
``flags`` gets a typed option (its own name first, then uvicorn's name for the same
setting), and ``--help`` shows its type, default, key and environment variable. uvicorn
flags that have no meaning here are recognised and refused with what to use instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, NoReturn

import click

from ._version import __version__
from .config import Config, KeySpec, dump_config, key_specs, load_config, require_target
from .errors import AppLoadError, BindError, ConfigError, LifespanError, SidecarError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3

#: What ``--proxy-headers`` trusts when no trusted proxies are configured (uvicorn's
#: default for ``--forwarded-allow-ips``).
PROXY_HEADERS_DEFAULT = "127.0.0.1, ::1"

# uvicorn flags with no meaning here: (takes a value, what to do instead).
REFUSED_FLAGS: dict[str, tuple[bool, str]] = {
    "--http": (
        True,
        "the app port is the sidecar's own HTTP/1.1 server (on aiohttp's parser), "
        "there is no implementation to choose: drop the flag",
    ),
    "--http2": (False, "HTTP/2 is not served: terminate it at the ingress or the mesh"),
    "--ws": (
        True,
        "WebSockets are served by aiohttp's implementation, there is none to choose: drop "
        "the flag (--ws-ping-interval and --ws-max-size tune it)",
    ),
    "--ws-max-queue": (
        True,
        "incoming WebSocket messages wait in the connection until the app receives them; "
        "--ws-max-size (server.ws_max_message_size) bounds each message",
    ),
    "--ws-ping-timeout": (
        True,
        "a peer must answer a ping within half of --ws-ping-interval (server.ws_ping_interval)",
    ),
    "--ws-per-message-deflate": (True, "WebSocket compression is not offered: drop the flag"),
    "--interface": (
        True,
        "the app must be an ASGI 3 app (FastAPI, Starlette, Litestar, Quart, Django's "
        "get_asgi_application()); wrap a WSGI app, for instance in a2wsgi's WSGIMiddleware",
    ),
    "--log-config": (
        True,
        "the sidecar configures logging itself: use --log-level, --log-format text|json, "
        "--access-log and --access-log-format (the logging.* keys)",
    ),
    "--use-colors": (False, "the text logs are not coloured: drop the flag"),
    "--server-header": (
        False,
        "the app port sends no Server header of its own; an app that wants one sends it",
    ),
    "--no-date-header": (
        False,
        "a Date header is sent unless the app sends one: set it in the app to control it",
    ),
    "--timeout-worker-healthcheck": (
        True,
        "the app's event loop is watched from the admin thread: see health.live_max_loop_lag "
        "and health.ready_max_loop_lag",
    ),
    "--ssl-keyfile-password": (
        True,
        "the key must not be encrypted: mount it from a Secret and pass --ssl-keyfile",
    ),
    "--ssl-version": (
        True,
        "TLS uses Python's defaults for a server (TLS 1.2 and later): drop the flag",
    ),
    "--ssl-cert-reqs": (
        True,
        "client certificates are not requested: verify them at the ingress or the mesh",
    ),
    "--ssl-ca-certs": (
        True,
        "client certificates are not requested: verify them at the ingress or the mesh",
    ),
    "--ssl-ciphers": (
        True,
        "TLS uses Python's default cipher list for a server: drop the flag",
    ),
    "--header": (
        True,
        "the app port adds no default response headers: add them in the app (a middleware)",
    ),
    "--h11-max-incomplete-event-size": (
        True,
        "request heads are bounded by server.max_request_line, server.max_header_size and "
        "server.max_headers",
    ),
    "--reset-contextvars": (False, "not supported: drop the flag"),
}

# uvicorn flags that ask for what the sidecar does anyway: accepted, and nothing changes.
NO_OP_FLAGS = ("--no-server-header", "--date-header", "--no-use-colors")

logger = logging.getLogger("sidecar")


def _param(spec: KeySpec) -> str:
    return spec.path.replace(".", "__")


def _shown_default(spec: KeySpec) -> str | None:
    default = spec.default
    if isinstance(default, bool):
        return "true" if default else "false"
    if default == "" or (default == -1 and spec.name == "fd"):
        return None
    return str(default)


class _KeyOption(click.Option):
    """An option that sets a configuration key; ``--help`` names its default and variable.

    Its own default stays ``None`` (unset), so that a flag left out does not override
    the file or the environment.
    """

    def __init__(self, *args: Any, spec: KeySpec, **kwargs: Any) -> None:
        self.spec = spec
        super().__init__(*args, **kwargs)

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        extra["envvars"] = (self.spec.env,)
        shown = _shown_default(self.spec)
        if shown is not None:
            extra["default"] = shown
        return extra


def _click_type(spec: KeySpec) -> Any:
    kind, bounds = spec.type, spec.bounds
    if typing.get_origin(kind) is Literal:
        return click.Choice([str(choice) for choice in typing.get_args(kind)])
    if kind is int:
        return click.IntRange(bounds.get("min"), bounds.get("max"))
    if kind is float:
        if bounds.get("above") is not None:
            return click.FloatRange(bounds["above"], min_open=True)
        return click.FloatRange(bounds.get("min"), bounds.get("max"))
    if bounds.get("path"):
        return click.Path()
    return str


def _key_option(spec: KeySpec) -> Callable[[Any], Any]:
    help_text = spec.doc.replace("`", "") + f" [{spec.path}]"
    if spec.type is bool:
        name = spec.flags[0]
        return click.option(
            f"{name}/--no-{name.removeprefix('--')}",
            _param(spec),
            cls=_KeyOption,
            spec=spec,
            default=None,
            help=help_text,
        )
    return click.option(
        *spec.flags,
        _param(spec),
        cls=_KeyOption,
        spec=spec,
        type=_click_type(spec),
        default=None,
        multiple=bool(spec.bounds.get("repeatable")),
        help=help_text + (" Repeatable." if spec.bounds.get("repeatable") else ""),
    )


def _refuse(flag: str, instead: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value not in (None, False):
            raise click.UsageError(f"{flag} is not supported: {instead}", ctx)

    return callback


FLAG_SPECS = [spec for spec in key_specs() if spec.flags]


def _config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add APP, --config, --env-file and the key flags shared by ``run`` and ``check-config``."""

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        return command(**kwargs)

    decorated: Callable[..., Any] = wrapper
    for flag, (takes_value, instead) in reversed(REFUSED_FLAGS.items()):
        decorated = click.option(
            flag,
            "refused_" + flag.removeprefix("--").replace("-", "_"),
            is_flag=not takes_value,
            default=None if takes_value else False,
            hidden=True,
            expose_value=False,
            callback=_refuse(flag, instead),
        )(decorated)
    for flag in NO_OP_FLAGS:
        decorated = click.option(flag, is_flag=True, hidden=True, expose_value=False)(decorated)
    decorated = click.option(
        "--proxy-headers/--no-proxy-headers",
        "proxy_headers",
        default=None,
        help="Use the Forwarded and X-Forwarded-* headers of trusted proxies: with no "
        f"--forwarded-allow-ips (server.trusted_proxies), trust {PROXY_HEADERS_DEFAULT} as "
        "uvicorn does; --no-proxy-headers ignores the headers. Without either, only "
        "server.trusted_proxies decides (empty by default: the headers are ignored).",
    )(decorated)
    for spec in reversed(FLAG_SPECS):
        decorated = _key_option(spec)(decorated)
    decorated = click.option(
        "--env-file",
        "env_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="Read environment variables from this dotenv file (the app sees them, and "
        "SIDECAR_* ones configure the sidecar); variables already set win. Needs "
        "python-dotenv: pip install 'lifespan-sidecar[dotenv]'.",
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


def read_env_file(path: str) -> dict[str, str]:
    """Read a dotenv file with python-dotenv; raise ``ConfigError`` when that is impossible."""
    if not Path(path).is_file():
        raise ConfigError([f"--env-file: no such file {path!r}; expected a dotenv file"])
    try:
        from dotenv import dotenv_values
    except ImportError:
        raise ConfigError(
            [
                "--env-file needs python-dotenv, which is not installed: "
                "pip install 'lifespan-sidecar[dotenv]' (or python-dotenv)"
            ]
        ) from None
    return {name: value for name, value in dotenv_values(path).items() if value is not None}


def _environment(kwargs: Mapping[str, Any]) -> dict[str, str]:
    """The process environment, with the ``--env-file`` variables it does not set yet."""
    env_file = kwargs.get("env_file")
    from_file = read_env_file(env_file) if env_file else {}
    return {**from_file, **os.environ}


def _build_config(
    kwargs: Mapping[str, Any], env: Mapping[str, str], *, need_target: bool
) -> Config:
    overrides: dict[str, Any] = {}
    for spec in FLAG_SPECS:
        value = kwargs.get(_param(spec))
        if spec.bounds.get("repeatable"):
            value = ",".join(value) if value else None
        overrides[spec.path] = value
    overrides["app.target"] = kwargs.get("app")
    path = kwargs.get("config_path")
    proxy_headers = kwargs.get("proxy_headers")
    allowed = overrides["server.trusted_proxies"]
    if proxy_headers is False:
        if allowed is not None:
            raise ConfigError(
                [
                    "--no-proxy-headers and --forwarded-allow-ips/--trusted-proxies "
                    f"({allowed!r}) contradict each other; expected one of them"
                ]
            )
        overrides["server.trusted_proxies"] = ""
    config = load_config(path, env=env, overrides=overrides)
    if proxy_headers and allowed is None and not config.server.trusted_proxies:
        overrides["server.trusted_proxies"] = PROXY_HEADERS_DEFAULT
        config = load_config(path, env=env, overrides=overrides)
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


def _config_or_exit(
    kwargs: Mapping[str, Any], *, need_target: bool
) -> tuple[Config, dict[str, str]]:
    try:
        env = _environment(kwargs)
        return _build_config(kwargs, env, need_target=need_target), env
    except ConfigError as exc:
        _config_problems(exc)


def serve(config: Config) -> NoReturn:
    """Run a sidecar for ``config`` and exit with the code its end maps to.

    Logging is configured: every message before the exit goes through its format.
    """
    from .runner import run

    try:
        if config.server.workers > 1:
            from .workers import run_supervisor

            run_supervisor(config)
        else:
            run(config)
    except ConfigError as exc:
        _fatal(EXIT_CONFIG, "; ".join(exc.problems))
    except AppLoadError as exc:
        _fatal(EXIT_STARTUP, str(exc), trace=exc.trace)
    except LifespanError as exc:
        _fatal(EXIT_STARTUP, f"the app failed to start ({exc.reason}): {str(exc).splitlines()[0]}")
    except (BindError, SidecarError) as exc:  # a port that cannot be bound; workers failing
        _fatal(EXIT_ERROR, str(exc))
    except Exception:
        logger.exception("internal error")
        _fatal(EXIT_ERROR, "stopped by an internal error (traceback above)")
    sys.exit(EXIT_OK)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="lifespan-sidecar")
def main() -> None:
    """Host an ASGI app for Kubernetes: lifespan, probes, preStop drain, metrics."""


@main.command("run")
@_config_options
def run_command(**kwargs: Any) -> None:
    """Serve APP (`module:attribute`) until SIGTERM or SIGINT."""
    from .logs import configure_logging

    config, env = _config_or_exit(kwargs, need_target=True)
    # The app reads its settings from the environment too (the point of --env-file).
    for name, value in env.items():
        os.environ.setdefault(name, value)
    configure_logging(config.logging)
    if config.reload.enabled:
        from .reload import Reloader

        child = [sys.executable, "-m", "sidecar", "reload-child"]
        try:
            sys.exit(Reloader(config, child).run())
        except ConfigError as exc:
            _fatal(EXIT_CONFIG, "; ".join(exc.problems))
    serve(config)


@main.command("reload-child", hidden=True)
@click.option("--config-fd", "config_fd", type=int, required=True)
def reload_child_command(config_fd: int) -> None:
    """Serve the app for ``sidecar run --reload`` (started by it, one process per change)."""
    from .logs import configure_logging
    from .reload import read_child_config

    config = read_child_config(config_fd)
    configure_logging(config.logging)
    serve(config)


@main.command("check-config")
@_config_options
def check_config_command(**kwargs: Any) -> None:
    """Validate the configuration and print the effective values as YAML."""
    config, _ = _config_or_exit(kwargs, need_target=False)
    click.echo(dump_config(config), nl=False)


@main.command("prestop")
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config file (for admin.port).")  # fmt: skip
@click.option(
    "--admin-port",
    "admin_port",
    type=click.IntRange(0, 65535),
    default=None,
    help="The local sidecar's admin port [admin.port; default: 8081].",
)
@click.option(
    "--timeout",
    "timeout",
    type=float,
    default=None,
    help="Seconds to wait for the answer [default: shutdown.drain_delay + 5].",
)
def prestop_command(config_path: str | None, admin_port: int | None, timeout: float | None) -> None:
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
