"""Render the configuration reference (``docs/configuration.md``) from the schema.

``python -m sidecar.reference > docs/configuration.md`` regenerates it; a test keeps the
file and the schema in sync, so the reference cannot drift from what the code accepts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

from .cli import NO_OP_FLAGS, PROXY_HEADERS_DEFAULT, REFUSED_FLAGS
from .config import SECTIONS, KeySpec, check_key_specs, key_specs

_INTRO = """\
# Configuration reference

Generated from the configuration schema (`sidecar/config/schema.py`) by
`python -m sidecar.reference > docs/configuration.md`; a test fails when the two differ.

Every key can be set in the YAML file given with `--config` (section, then key), in an
environment variable `SIDECAR_<SECTION>_<KEY>`, and, where a flag is listed, on the
command line of `sidecar run` and `sidecar check-config`. Precedence: **flags >
environment > file > defaults**. Durations are seconds, fractions allowed. Unknown keys
and bad values are errors naming the key, the value and the expected form.
`sidecar check-config` prints the effective configuration.
"""

_SECTION_DOCS = {
    "app": "The ASGI app and how to import it.",
    "server": "The app port: where it listens, its limits and timeouts.",
    "admin": "The admin port (probes, `/prestop`, `/metrics`), on its own thread.",
    "lifespan": "The ASGI lifespan: startup and shutdown.",
    "shutdown": "The drain: what happens between preStop or SIGTERM and the exit.",
    "logging": "Log level, format and the access log.",
    "metrics": "Request metrics on `/metrics`.",
    "health": "Event-loop monitoring and the checks the sidecar runs.",
    "reload": "Development only: `sidecar run --reload`.",
}


def _code(value: str) -> str:
    return f"`{value}`" if value else ""


def _default(spec: KeySpec) -> str:
    default = spec.default
    if isinstance(default, tuple):
        return "`[]`"
    if isinstance(default, str):
        return f"`{json.dumps(default)}`" if default == "" else f"`{default}`"
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    return f"`{default:g}`" if isinstance(default, float) else f"`{default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(specs: Iterable[KeySpec], *, with_sources: bool) -> list[str]:
    if with_sources:
        lines = [
            "| key | accepts | default | environment | flags | meaning |",
            "|---|---|---|---|---|---|",
        ]
    else:
        lines = ["| key | accepts | default | meaning |", "|---|---|---|---|"]
    for spec in specs:
        default = _default(spec) if spec.default is not dataclasses.MISSING else "required"
        cells = [f"`{spec.name}`", _cell(spec.expected), _cell(default)]
        if with_sources:
            cells += [f"`{spec.env}`", ", ".join(f"`{flag}`" for flag in spec.flags)]
        cells.append(_cell(spec.doc))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _uvicorn_flags() -> list[str]:
    lines = [
        "## uvicorn's flags",
        "",
        "`sidecar run` takes uvicorn's flags where the setting exists, with uvicorn's meaning.",
        "Defaults may differ (they are the sidecar's, listed above).",
        "",
        "| uvicorn flag | here |",
        "|---|---|",
    ]
    rows: dict[str, str] = {}
    for spec in key_specs():
        for flag in spec.flags:
            rows[flag] = f"sets `{spec.path}`"
            if spec.type is bool:
                rows[f"--no-{flag.removeprefix('--')}"] = f"sets `{spec.path}` to false"
    rows["--proxy-headers"] = (
        "use the proxy headers of trusted proxies: with no `--forwarded-allow-ips` and no "
        f"`server.trusted_proxies`, trust `{PROXY_HEADERS_DEFAULT}` (uvicorn's default). "
        "Without the flag the sidecar ignores proxy headers unless `server.trusted_proxies` "
        "is set: in a pod, loopback peers are mesh proxies that pass client headers on"
    )
    rows["--no-proxy-headers"] = "ignore proxy headers: `server.trusted_proxies` is emptied"
    rows["--env-file"] = (
        "read a dotenv file into the environment (variables already set win); needs "
        "`pip install 'lifespan-sidecar[dotenv]'`"
    )
    rows["--reload"] += "; needs `pip install 'lifespan-sidecar[reload]'`"
    for flag in NO_OP_FLAGS:
        rows[flag] = "accepted: the sidecar does this anyway"
    for flag, (_, instead) in REFUSED_FLAGS.items():
        rows[flag] = f"refused (exit code 2): {instead}"
    for flag in UVICORN_FLAGS:
        lines.append(f"| `{flag}` | {_cell(rows[flag])} |")
    return lines


#: uvicorn's options (0.54, ``uvicorn --help``), each spelling of a boolean pair.
UVICORN_FLAGS = (
    "--host", "--port", "--uds", "--fd", "--reload", "--reload-dir", "--reload-include",
    "--reload-exclude", "--reload-delay", "--workers", "--loop", "--http", "--http2", "--ws",
    "--ws-max-size", "--ws-max-queue", "--ws-ping-interval", "--ws-ping-timeout",
    "--ws-per-message-deflate", "--lifespan", "--interface", "--env-file", "--log-config",
    "--log-level", "--access-log", "--no-access-log", "--use-colors", "--no-use-colors",
    "--proxy-headers", "--no-proxy-headers", "--server-header", "--no-server-header",
    "--date-header", "--no-date-header", "--forwarded-allow-ips", "--root-path",
    "--limit-concurrency", "--backlog", "--limit-max-requests", "--limit-max-requests-jitter",
    "--timeout-keep-alive", "--timeout-graceful-shutdown", "--timeout-worker-healthcheck",
    "--ssl-keyfile", "--ssl-certfile", "--ssl-keyfile-password", "--ssl-version",
    "--ssl-cert-reqs", "--ssl-ca-certs", "--ssl-ciphers", "--header", "--app-dir",
    "--h11-max-incomplete-event-size", "--reset-contextvars", "--factory",
)  # fmt: skip


def render_reference() -> str:
    """The whole reference as Markdown."""
    lines = [_INTRO]
    specs = key_specs()
    for section in SECTIONS:
        lines += [f"## `{section}`", "", _SECTION_DOCS[section], ""]
        lines += _table((s for s in specs if s.section == section), with_sources=True)
        lines.append("")
        if section == "health":
            lines += [
                "### `health.checks` entries",
                "",
                "Each entry of `health.checks` is a mapping with these keys (in the "
                "environment, `SIDECAR_HEALTH_CHECKS` holds the whole list in YAML or JSON).",
                "",
            ]
            lines += _table(check_key_specs(), with_sources=False)
            lines.append("")
    lines += _uvicorn_flags()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
