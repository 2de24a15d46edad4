"""The admin port: probes, the preStop drain and /metrics, on a thread of its own.

The admin server runs its own event loop in its own thread, so the kubelet gets an
answer even while the app's event loop is busy (a CPU-bound handler, a blocking call),
and a probe never waits behind app traffic. Kubelet probes time out after 1 s by
default; every answer here comes from in-memory state and never awaits the app.

The probe surface follows kube-apiserver: ``/livez``, ``/readyz`` and ``/startupz``,
``/<probe>/<check>`` for one check, ``?exclude=<check>`` (repeatable; ``tag:<tag>``
excludes a group), ``?verbose``, JSON on ``Accept: application/json``, and
``/healthz`` as the deprecated name of ``/livez``. The same thread runs the background
tasks that keep the probes' answers current (the event-loop watcher, the checks).

``/`` is the status page for people (``status``), or its content as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from .auth import AdminGuard
from .config import AdminConfig
from .errors import BindError
from .probe import Check, Probe, check_document, passes
from .state import Lifecycle
from .status import HEADERS as STATUS_PAGE_HEADERS
from .status import refresh_interval
from .status import render as render_status_page

logger = logging.getLogger("sidecar.admin")

_FORMATS = {
    "text": "text/plain; version=0.0.4",
    "openmetrics": "application/openmetrics-text; version=1.0.0",
}
# Path -> the probe whose checks it answers with; /healthz is kube's deprecated name.
_PROBES = {"/" + probe.endpoint: probe for probe in Probe} | {"/healthz": Probe.LIVENESS}
_HEALTHZ_WARNING = '299 - "/healthz is deprecated; use /livez"'

BackgroundTask = Callable[[], Coroutine[Any, Any, None]]
StatusSource = Callable[[], Mapping[str, Any]]


class MetricsSource(Protocol):
    def render(self, accept: str | None) -> tuple[bytes, str]: ...


class ProbeSource(Protocol):
    def checks(self, probe: Probe) -> list[Check]: ...


def _check_line(check: Check) -> str:
    if check.ok:
        return f"[+]{check.name} ok"
    line = f"[-]{check.name} failed: {check.message}"
    return line if check.critical else line + " (severity warning: not counted)"


def render_checks(
    kind: str,
    checks: Sequence[Check],
    *,
    verbose: bool,
    as_json: bool,
    warnings: Sequence[str] = (),
) -> tuple[int, str, str]:
    """Return (status, body, content type) for a probe, kube-apiserver style.

    Only critical checks decide the status; a failing ``warning`` check is listed
    with ``[-]`` but the probe still passes.
    """
    ok = passes(checks)
    status = 200 if ok else 503
    if as_json:
        document: dict[str, Any] = {
            "status": "ok" if ok else "failed",
            "checks": [check_document(c) for c in checks],
        }
        if warnings:
            document["warnings"] = list(warnings)
        return status, json.dumps(document), "application/json"
    if not verbose:
        if ok:
            return status, "ok", "text/plain"
        failed = ", ".join(c.name for c in checks if not c.ok and c.critical)
        return status, f"{kind} check failed: {failed}", "text/plain"
    lines = [_check_line(c) for c in checks]
    lines.extend(warnings)
    lines.append(f"{kind} check {'passed' if ok else 'failed'}")
    return status, "\n".join(lines) + "\n", "text/plain"


def _exclude(checks: list[Check], excluded: set[str]) -> tuple[list[Check], list[str]]:
    """Drop excluded checks (by name, or ``tag:<tag>``); return them and the unmatched."""
    kept, matched = [], set()
    for check in checks:
        hits = {
            item
            for item in excluded
            if item == check.name or (item.startswith("tag:") and item[4:] in check.tags)
        }
        if hits:
            matched |= hits
        else:
            kept.append(check)
    return kept, sorted(excluded - matched)


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/plain" not in accept


def _status_format(request: web.Request) -> str:
    """``json`` or ``html``: ``?format=`` decides, else the Accept header (HTML first)."""
    chosen = request.query.get("format")
    if chosen is not None:
        if chosen not in ("html", "json"):
            raise web.HTTPBadRequest(
                text=f"invalid format {chosen!r}; expected html or json\n",
                headers={"Cache-Control": "no-store"},
            )
        return chosen
    accept = request.headers.get("Accept", "")
    return "json" if "application/json" in accept and "text/html" not in accept else "html"


class AdminServer:
    """Serve the admin endpoints from a daemon thread with its own event loop."""

    def __init__(
        self,
        config: AdminConfig,
        lifecycle: Lifecycle,
        metrics: MetricsSource,
        probes: ProbeSource,
        *,
        background: Sequence[BackgroundTask] = (),
        guard: AdminGuard | None = None,
        serve_port: bool = True,
        status: StatusSource | None = None,
    ) -> None:
        """``serve_port`` false runs the thread's background tasks without a port (a
        worker of a pod with several: its supervisor serves the admin port). ``status``
        returns the status page's snapshot; without it ``/`` is not served."""
        self._config = config
        self._serve_port = serve_port
        self.guard = guard if guard is not None else AdminGuard("", "")
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._probes = probes
        self._background = tuple(background)
        self._status = status
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None
        #: Set once the admin port is bound (or binding failed).
        self.bound = threading.Event()
        self._error: BaseException | None = None
        self.address: tuple[str, int] | None = None

    # -- lifecycle of the admin thread ----------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and bind the port; raise ``BindError`` if binding fails."""
        self._thread = threading.Thread(target=self._run, name="sidecar-admin", daemon=True)
        self._thread.start()
        if not self.bound.wait(timeout):
            raise BindError(f"the admin server did not start within {timeout:g}s")
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() or logged; the thread must end
            if not self.bound.is_set():
                self._error = exc
                self.bound.set()
            else:
                logger.exception("admin server stopped unexpectedly")
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        runner = await self._bind() if self._serve_port else None
        tasks = [asyncio.create_task(start()) for start in self._background]
        for task in tasks:
            task.add_done_callback(_report_crash)
        self.bound.set()
        try:
            await self._stopped.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()

    async def _bind(self) -> web.AppRunner:
        app = web.Application(handler_args={"access_log": None})
        app.on_response_prepare.append(_without_server_header)
        for path in _PROBES:
            app.router.add_get(path, self._probe)
            app.router.add_get(path + "/{check}", self._probe)
        app.router.add_get("/prestop", self._prestop)
        app.router.add_post("/prestop", self._prestop)
        app.router.add_get("/metrics", self._metrics_handler)
        if self._status is not None:
            app.router.add_get("/", self._status_handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        host, port = self._config.host, self._config.port
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise BindError(
                f"cannot bind the admin port {host}:{port} (admin.host/admin.port): "
                f"{exc.strerror or exc}"
            ) from exc
        bound = runner.addresses[0]
        self.address = (bound[0], bound[1])
        return runner

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and join the thread (safe to call more than once)."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout)

    # -- handlers (run on the admin thread) -----------------------------------------------

    async def _probe(self, request: web.Request) -> web.Response:
        # The route that matched, e.g. "/readyz/{check}": its first segment is the probe.
        resource = request.match_info.route.resource
        if resource is None:  # only system routes (404/405) have none; never this handler
            raise web.HTTPNotFound()
        base = "/" + resource.canonical.split("/")[1]
        kind = base.lstrip("/")  # the name in the answer: healthz stays healthz
        checks = self._probes.checks(_PROBES[base])
        headers = {"Cache-Control": "no-store"}
        if base == "/healthz":
            headers["Warning"] = _HEALTHZ_WARNING
        warnings: list[str] = []
        name = request.match_info.get("check")
        if name is not None:
            found = [check for check in checks if check.name == name]
            if not found:
                names = ", ".join(check.name for check in checks)
                return web.Response(
                    status=404,
                    text=f"no {kind} check named {name!r}; {kind} checks: {names}\n",
                    headers=headers,
                )
            # Asked for by name, a check decides the answer whatever its severity.
            checks = [dataclasses.replace(found[0], critical=True)]
        else:
            excluded = {
                part.strip()
                for value in request.query.getall("exclude", [])
                for part in value.split(",")
                if part.strip()
            }
            if excluded:
                checks, unmatched = _exclude(checks, excluded)
                if unmatched:
                    quoted = ", ".join(f'"{item}"' for item in unmatched)
                    warnings.append(
                        f"warn: some health checks cannot be excluded: no matches for {quoted}"
                    )
        status, body, content_type = render_checks(
            kind,
            checks,
            verbose="verbose" in request.query,
            as_json=_wants_json(request),
            warnings=warnings,
        )
        return web.Response(status=status, text=body, content_type=content_type, headers=headers)

    async def _prestop(self, request: web.Request) -> web.Response:
        denial = self.guard.check(request.remote, request.headers.get("Authorization"))
        if denial is not None:
            logger.warning("refused /prestop from %s: %s", request.remote or "-", denial.message)
            headers = {"Cache-Control": "no-store"}
            if denial.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="sidecar-admin"'
            return web.Response(status=denial.status, text=denial.message + "\n", headers=headers)
        lifecycle = self._lifecycle
        end = lifecycle.begin_drain()
        remaining = end - lifecycle.clock()
        client = request.remote or "-"
        if remaining > 0:
            logger.info("preStop from %s: draining for %.1fs before SIGTERM", client, remaining)
            await asyncio.sleep(remaining)
        return web.Response(text="drained\n", headers={"Cache-Control": "no-store"})

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        # ?format=text|openmetrics overrides the Accept header, for scrapers that cannot
        # choose (Prometheus before 2.49 always prefers OpenMetrics) and for people.
        accept = _FORMATS.get(request.query.get("format", ""), request.headers.get("Accept"))
        body, content_type = self._metrics.render(accept)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _status_handler(self, request: web.Request) -> web.Response:
        # Read-only: a GET (and HEAD) that computes the snapshot from memory, here on the
        # admin thread, so it answers while the app's loop is blocked.
        source = self._status
        if source is None:  # the route exists only with a source
            raise web.HTTPNotFound()
        answer = _status_format(request)
        if answer == "json":
            return web.Response(
                text=json.dumps(source()),
                content_type="application/json",
                headers={
                    "Cache-Control": "no-store",
                    "X-Content-Type-Options": "nosniff",
                    "Vary": "Accept",
                },
            )
        try:
            refresh = refresh_interval(request.query.get("refresh"))
        except ValueError as exc:
            raise web.HTTPBadRequest(
                text=f"{exc}\n", headers={"Cache-Control": "no-store"}
            ) from None
        return web.Response(
            text=render_status_page(source(), refresh_s=refresh),
            content_type="text/html",
            headers={**STATUS_PAGE_HEADERS, "Vary": "Accept"},
        )


async def _without_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp names itself and Python in every answer: a gift to whoever scans for
    # versions with known flaws. The sidecar names nothing.
    response.headers.popall("Server", None)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("admin background task failed", exc_info=task.exception())
