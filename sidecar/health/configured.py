"""Checks defined in the configuration (``health.checks``): tcp, http and callable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp

from ..config import HealthCheckConfig, redact_url
from ..errors import CheckFailed
from ..probe import Probe
from .definition import CheckDefinition, CheckFunction, RunsOn, is_async_callable


async def _tcp_check(host: str, port: int) -> None:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise CheckFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _http_check(url: str, shown: str) -> None:
    # The kubelet's rule for HTTP probes: 200-399 passes, redirects are not followed.
    # Messages name the URL as ``shown``: without its password, since probes and the
    # status page are open to whoever reaches the admin port.
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, allow_redirects=False) as response,
        ):
            status = response.status
    except aiohttp.ClientError as exc:
        raise CheckFailed(f"GET {shown} failed: {exc}") from None
    if not 200 <= status < 400:
        raise CheckFailed(f"GET {shown} answered {status}")


def config_check(
    spec: HealthCheckConfig, resolve: Callable[[str], CheckFunction]
) -> CheckDefinition:
    """Build the check an entry of ``health.checks`` describes.

    ``resolve`` imports a ``callable`` check's target (the composition root passes the
    loader's function, so this module does not import app code itself).
    """
    run: CheckFunction
    runs_on: RunsOn = "admin-loop"
    if spec.type == "tcp":
        host, port = spec.host, spec.port

        def run() -> Any:
            return _tcp_check(host, port)

        where = f"{host}:{port}"
    elif spec.type == "http":
        url, where = spec.url, redact_url(spec.url)

        def run() -> Any:
            return _http_check(url, where)

    else:
        run = resolve(spec.target)
        runs_on = "app-loop" if is_async_callable(run) else "thread"
        where = spec.target
    # The configuration has checked every setting (config.check_settings).
    return CheckDefinition(
        name=spec.name,
        probe=Probe(spec.probe),
        run=run,
        runs_on=runs_on,
        timeout=spec.timeout,
        interval=spec.interval,
        failure_threshold=spec.failure_threshold,
        severity=spec.severity,
        tags=spec.tags,
        source=f"config: {spec.type} {where}",
    )
