"""Play Kubernetes on one machine over loopback and roll a Deployment under load.

Parts, all on 127.0.0.1, all in one asyncio loop except the pods:

- **pods**: ``python -m sidecar run tests.rollout.app:app`` subprocesses (the worktree's
  ``sidecar`` package, through ``PYTHONPATH``), each with its app and admin port;
- **the kubelet and the endpoints controller**: a readiness probe of each pod every
  ``probe_period`` (``GET /readyz``, ``probe_timeout``, success on 200-399); one success
  makes a pod ready, ``failure_threshold`` failures in a row unready, as the kubelet's
  ``successThreshold``/``failureThreshold``; a change of readiness reaches the load
  balancer only ``propagation_lag`` seconds later, as endpoint updates reach kube-proxy,
  ingress controllers and meshes. (Kubernetes also takes a terminating pod out of the
  endpoints when its deletion begins; the simulator does not, so a pod leaves the load
  balancer only through its readiness, the slower of the two paths.)
- **a load balancer** (an aiohttp server and client): round robin over the pods it
  currently routes to, keep-alive connections to them, **no retries**: a request that
  meets a refused or reset connection fails (``502`` with ``x-proxy-error: <kind>``), a
  response cut after it started is cut for the client too, and a WebSocket whose pod
  connection breaks is closed with 1014. A close code sent by a pod (1012 when a sidecar
  stops) is passed on as it is;
- **a load generator**: a steady, bounded open-loop rate of short, slow and streaming
  requests, plus a fixed number of WebSocket sessions (echo, then a normal close). A
  session the pod ends with 1012 (service restart) is a clean close: it is counted on
  its own and the client reconnects, through the load balancer, to another pod;
- **the rolling update** (``maxSurge: 1``, ``maxUnavailable: 0``): start a new pod, wait
  until the load balancer routes to it, call the old pod's preStop (``GET /prestop`` on
  its admin port, as a kubelet ``httpGet`` hook does), send SIGTERM when it returns, wait
  for the exit (SIGKILL after the grace period), repeat for every old pod.

Without the drain (``Settings.drain`` false) pods run with ``--drain-delay 0`` and get
SIGTERM straight away, without preStop: what a server that stops on SIGTERM does.

While a pod runs its lifespan shutdown the simulator reads its ``/metrics`` (requests
aborted at the graceful timeout, requests served, drain duration): the app's shutdown
waits for the simulator on stdin (``ROLLOUT_SHUTDOWN_GATE``), so the reading never races
the exit.

``run(Settings(...))`` returns a ``Report``; ``bench/rollout.py`` is the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from . import app as pod_app

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
APP_TARGET = "tests.rollout.app:app"
ERROR_HEADER = "x-proxy-error"
NO_ENDPOINTS = "no ready endpoints"
SERVICE_RESTART = 1012  # WebSocket close code: the server restarts, reconnect elsewhere
BAD_GATEWAY = 1014  # WebSocket close code a gateway sends when the upstream failed
KINDS = ("short", "slow", "stream", "websocket")

_ADMIN_LINE = re.compile(r"admin endpoints on (http://[^\s:]+:\d+)")
_APP_LINE = re.compile(r"serving the app on (http://[^\s:]+:\d+)")
_IN_FLIGHT_AT_SHUTDOWN = re.compile(r"in flight (\d+)\)")
# Headers that belong to one connection, not to the request or response.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    }
)


class SimulationError(RuntimeError):
    """The simulation itself could not go on (a pod did not start, a wait timed out)."""


@dataclass
class Settings:
    """One simulation; durations are seconds."""

    pods: int = 3
    rollouts: int = 2
    rate: float = 200.0  # HTTP requests per second through the load balancer
    websockets: int = 8  # WebSocket sessions open at any time
    slow_share: float = 0.05  # share of the HTTP requests that are slow
    stream_share: float = 0.05  # share of the HTTP requests that stream their response
    warmup: float = 1.0  # load before the first rollout
    cooldown: float = 1.0  # load after the last rollout
    slow_seconds: float = 2.0
    stream_chunks: int = 10
    stream_interval: float = 0.1
    # A session lasts this long unless a pod ends it first; longer than a pod's drain, so
    # sessions are open on every pod that stops and get its 1012.
    ws_session_seconds: float = 10.0
    ws_interval: float = 0.1
    drain: bool = True  # preStop and the sidecar's drain delay; False: SIGTERM straight away
    drain_delay: float = 2.0
    drain_mode: str = "idle"
    graceful_timeout: float = 10.0
    shutdown_timeout: float = 15.0
    probe_period: float = 0.25
    probe_timeout: float = 1.0  # the kubelet's default
    # Consecutive failed probes that make a pod unready, as the kubelet's failureThreshold
    # (3 by default there). 1 routes on the last probe alone, but then one stall of this
    # machine longer than probe_timeout unroutes every pod at once.
    failure_threshold: int = 3
    propagation_lag: float = 0.5
    request_timeout: float = 15.0  # client-side bound on every request and echo
    max_in_flight: int = 512  # the load generator never has more requests open
    app_startup: float = 0.2  # the app's lifespan startup
    pod_start_timeout: float = 30.0
    seed: int = 1  # the request mix is random, and reproducible
    workers: int = 1  # worker processes per pod (server.workers)

    @property
    def pod_drain_delay(self) -> float:
        return self.drain_delay if self.drain else 0.0

    @property
    def grace_period(self) -> float:
        """``terminationGracePeriodSeconds`` as the Helm chart computes it."""
        return self.pod_drain_delay + self.graceful_timeout + self.shutdown_timeout + 5.0

    def check(self) -> None:
        problems = []
        if self.pods < 1 or self.rollouts < 0 or self.websockets < 0 or self.max_in_flight < 1:
            problems.append("pods >= 1, rollouts >= 0, websockets >= 0, max_in_flight >= 1")
        if self.rate <= 0 or self.probe_period <= 0 or self.probe_timeout <= 0:
            problems.append("rate, probe_period and probe_timeout must be > 0")
        if self.failure_threshold < 1:
            problems.append("failure_threshold must be >= 1")
        if not 0 <= self.slow_share + self.stream_share <= 1:
            problems.append("slow_share + stream_share must be within 0..1")
        if self.drain_mode not in ("idle", "fixed"):
            problems.append("drain_mode is idle or fixed")
        if problems:
            raise ValueError("; ".join(problems))


# -- small tools ----------------------------------------------------------------------


class Pulse:
    """Wake every waiter whenever what they watch may have changed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def until(self, predicate: Callable[[], bool], within: float, what: str) -> None:
        try:
            async with asyncio.timeout(within):
                while not predicate():
                    await self._event.wait()
        except TimeoutError:
            raise SimulationError(f"timed out after {within:g}s waiting for {what}") from None


def classify(exc: BaseException) -> str:
    """Name a failed exchange with a pod (or with the load balancer) by its cause."""
    if isinstance(exc, TimeoutError):  # includes aiohttp's connect and read timeouts
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"connect error ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response cut"
    if isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET:
        return "connection reset"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return type(exc).__name__


def _no_retries(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """Make ``session`` report a reused connection that turns out closed, not resend.

    aiohttp resends an idempotent request once when a kept-alive connection turns out to
    be closed (RFC 9112, 9.3.1). A load balancer that does that hides the very drops the
    simulator is there to count. aiohttp has no public switch; its own test client
    turns it off through this attribute.
    """
    if not hasattr(session, "_retry_connection"):
        raise RuntimeError("this aiohttp has no _retry_connection: check that it does not retry")
    session._retry_connection = False
    return session


def _scrape(text: str) -> dict[str, float]:
    """Sum the samples of each metric name in a Prometheus text exposition."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


# -- pods ---------------------------------------------------------------------------------


@dataclass
class PodRecord:
    """What happened to one pod; times are seconds since the simulation began."""

    name: str
    generation: int
    spawned_at: float | None = None
    routed_at: float | None = None  # the load balancer started routing to it
    terminating_at: float | None = None
    prestop_seconds: float | None = None  # the preStop call, until it answered
    prestop_status: int | None = None
    prestop_error: str | None = None
    exit_seconds: float | None = None  # SIGTERM until the process exited
    termination_seconds: float | None = None  # termination began until the exit
    exit_code: int | None = None
    killed: bool = False  # still running at the end of the grace period
    lifespan_shutdown: bool = False  # the app's own "lifespan shutdown complete" line
    in_flight_at_shutdown: int | None = None  # requests the app had open then
    requests_aborted: float | None = None  # sidecar_http_requests_aborted_total
    requests_served: float | None = None  # sidecar_http_requests_total, every code
    drain_seconds: float | None = None  # sidecar_drain_duration_seconds
    metrics_error: str | None = None
    probe_failures: dict[str, int] = field(default_factory=dict)  # by cause, while running
    warnings: list[str] = field(default_factory=list)  # the pod's warning and error lines
    log_tail: list[str] = field(default_factory=list)  # kept when something went wrong

    @property
    def clean(self) -> bool:
        return (
            self.exit_code == 0
            and not self.killed
            and self.lifespan_shutdown
            and self.requests_aborted == 0
        )


class Pod:
    """One sidecar process hosting the test app."""

    def __init__(
        self,
        name: str,
        generation: int,
        settings: Settings,
        kubelet: aiohttp.ClientSession,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.settings = settings
        self.record = PodRecord(name, generation)
        self.admin_url = ""
        self.app_url = ""
        self.lines: list[str] = []
        self._kubelet = kubelet
        self._clock = clock
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._gate: asyncio.Task[None] | None = None
        self._eof = False
        self._pulse = Pulse()

    def command(self) -> list[str]:
        s = self.settings
        return [
            sys.executable, "-m", "sidecar", "run", APP_TARGET,
            "--host", HOST, "--port", "0", "--admin-host", HOST, "--admin-port", "0",
            "--drain-delay", f"{s.pod_drain_delay:g}",
            "--graceful-timeout", f"{s.graceful_timeout:g}",
            "--shutdown-timeout", f"{s.shutdown_timeout:g}",
            "--startup-timeout", f"{s.pod_start_timeout:g}",
            "--workers", str(s.workers),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "ROLLOUT_"))}
        # The sidecar and the app of this checkout, whatever is installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["SIDECAR_SHUTDOWN_DRAIN_MODE"] = self.settings.drain_mode
        env["ROLLOUT_POD"] = self.name
        env["ROLLOUT_STARTUP_SECONDS"] = f"{self.settings.app_startup:g}"
        # The gate holds one process's lifespan shutdown while the final metrics are read;
        # workers share the pod's stdin, so a pod with several is not gated.
        env["ROLLOUT_SHUTDOWN_GATE"] = "stdin" if self.settings.workers == 1 else ""
        env["ROLLOUT_GATE_TIMEOUT"] = "10"
        return env

    async def start(self) -> None:
        """Spawn the process; return once its admin and app ports are known."""
        self.record.spawned_at = self._clock()
        self._proc = await asyncio.create_subprocess_exec(
            *self.command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.environment(),
            cwd=ROOT,
        )
        self._reader = asyncio.create_task(self._read())
        timeout = self.settings.pod_start_timeout
        self.admin_url = (await self.wait_line(_ADMIN_LINE, timeout)).group(1)
        self.app_url = (await self.wait_line(_APP_LINE, timeout)).group(1)

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            self._on_line(line)
            self._pulse.fire()
        self._eof = True
        self._pulse.fire()

    def _on_line(self, line: str) -> None:
        if " WARNING " in line or " ERROR " in line or " CRITICAL " in line:
            self.record.warnings.append(line)
        if pod_app.SHUTDOWN_STARTED in line and self.settings.workers == 1:
            match = _IN_FLIGHT_AT_SHUTDOWN.search(line)
            if match:
                self.record.in_flight_at_shutdown = int(match.group(1))
            self._gate = asyncio.create_task(self._read_metrics_then_release())
        elif pod_app.SHUTDOWN_COMPLETE in line:
            self.record.lifespan_shutdown = True

    async def _read_metrics_then_release(self) -> None:
        """Read the final metrics while the app's lifespan shutdown waits, then let it go."""
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with self._kubelet.get(self.admin_url + "/metrics", timeout=timeout) as reply:
                sums = _scrape(await reply.text())
            self.record.requests_aborted = sums.get("sidecar_http_requests_aborted_total")
            self.record.requests_served = sums.get("sidecar_http_requests_total")
            self.record.drain_seconds = sums.get("sidecar_drain_duration_seconds")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.record.metrics_error = f"{classify(exc)}: {exc}"
        finally:
            self._release_gate()

    def _release_gate(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(OSError):
                proc.stdin.write(b"go\n")
            proc.stdin.close()

    async def wait_line(self, pattern: re.Pattern[str], within: float) -> re.Match[str]:
        """Wait for a log line matching ``pattern``; fail if the process ends first."""
        seen = 0
        found: list[re.Match[str]] = []

        def matched() -> bool:
            nonlocal seen
            for line in self.lines[seen:]:
                match = pattern.search(line)
                if match:
                    found.append(match)
                    return True
            seen = len(self.lines)
            if self._eof:
                raise SimulationError(
                    f"{self.name} ended before logging {pattern.pattern!r}:\n" + self.tail()
                )
            return False

        await self._pulse.until(matched, within, f"{self.name} to log {pattern.pattern!r}")
        return found[0]

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.lines[-lines:])

    async def terminate(self, *, prestop: bool) -> None:
        """Stop the pod as the kubelet does: preStop hook, SIGTERM, SIGKILL at the deadline."""
        proc = self._proc
        assert proc is not None
        record = self.record
        began = self._clock()
        record.terminating_at = began
        grace = self.settings.grace_period
        if prestop:
            timeout = aiohttp.ClientTimeout(total=grace)
            try:
                async with self._kubelet.get(self.admin_url + "/prestop", timeout=timeout) as reply:
                    await reply.read()
                    record.prestop_status = reply.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                record.prestop_error = classify(exc)
            record.prestop_seconds = self._clock() - began
        signalled = self._clock()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(max(grace - (signalled - began), 0.1)):
                await proc.wait()
        except TimeoutError:
            record.killed = True
            proc.kill()
            await proc.wait()
        ended = self._clock()
        record.exit_code = proc.returncode
        record.exit_seconds = ended - signalled
        record.termination_seconds = ended - began
        await self._finish()

    async def _finish(self) -> None:
        """Collect the last log lines and close the pipes."""
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.shield(self._reader)
            self._reader.cancel()
        if self._gate is not None:
            await asyncio.gather(self._gate, return_exceptions=True)
        self._release_gate()
        if not self.record.clean:
            self.record.log_tail = self.lines[-40:]

    def abandon(self) -> None:
        """Close the pod's stdin without a word, as a simulator that died would."""
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()

    async def wait_exit(self, within: float) -> int | None:
        """Wait for the process to end by itself; return its exit code."""
        proc = self._proc
        assert proc is not None
        async with asyncio.timeout(within):
            code = await proc.wait()
        self.record.exit_code = code
        await self._finish()
        return code

    async def kill(self) -> None:
        """Make sure the process is gone (teardown after an error)."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
            if self.record.exit_code is None:
                self.record.exit_code = proc.returncode
                self.record.killed = True
        await self._finish()


# -- the load balancer --------------------------------------------------------------------


class Endpoint:
    """A pod as the load balancer knows it."""

    def __init__(self, pod: Pod, session: aiohttp.ClientSession) -> None:
        self.pod = pod
        self.session = session
        self.probed_ready = False  # the kubelet's verdict
        self.failed_probes = 0  # consecutive failed probes
        self.routed = False  # what the load balancer acts on, propagation_lag later
        self.removed = False
        self.probe_task: asyncio.Task[None] | None = None


class Proxy:
    """Probe pods, propagate readiness with a lag, balance requests over ready pods."""

    def __init__(
        self, settings: Settings, kubelet: aiohttp.ClientSession, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.url = ""
        self.upstream_errors: Counter[str] = Counter()
        self.ws_closes_from_pods: Counter[int] = Counter()
        self.events: list[tuple[float, str, str]] = []  # (time, pod, "routed"/"unrouted")
        self.changed = Pulse()
        self._kubelet = kubelet
        self._clock = clock
        self._endpoints: dict[str, Endpoint] = {}
        self._routable: list[Endpoint] = []
        self._turn = 0
        self._timers: set[asyncio.TimerHandle] = set()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(handler_args={"access_log": None})
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        for name in list(self._endpoints):
            await self.remove(name)
        for timer in self._timers:
            timer.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- endpoints --------------------------------------------------------------------

    def add(self, pod: Pod) -> None:
        """Start probing ``pod``; it is routed once a probe passes and the lag is over."""
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=5, sock_read=self.settings.request_timeout
        )
        session = _no_retries(
            aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        )
        endpoint = Endpoint(pod, session)
        self._endpoints[pod.name] = endpoint
        endpoint.probe_task = asyncio.create_task(self._probe_loop(endpoint))

    async def remove(self, name: str) -> None:
        """Forget a pod (it was deleted): stop probing it and close its connections."""
        endpoint = self._endpoints.pop(name)
        endpoint.removed = True
        self._set_routed(endpoint, False)
        if endpoint.probe_task is not None:
            endpoint.probe_task.cancel()
            await asyncio.gather(endpoint.probe_task, return_exceptions=True)
        await endpoint.session.close()

    def routed(self, name: str) -> bool:
        endpoint = self._endpoints.get(name)
        return endpoint is not None and endpoint.routed

    async def wait_routed(self, name: str, routed: bool, within: float) -> None:
        state = "routed" if routed else "no longer routed"
        await self.changed.until(lambda: self.routed(name) == routed, within, f"{name} {state}")

    async def _probe_loop(self, endpoint: Endpoint) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        url = endpoint.pod.admin_url + "/readyz"
        timeout = aiohttp.ClientTimeout(total=settings.probe_timeout)
        while True:
            began = loop.time()
            cause = None
            try:
                async with self._kubelet.get(url, timeout=timeout) as reply:
                    await reply.read()
                    if not 200 <= reply.status < 400:
                        cause = f"http {reply.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                cause = classify(exc)
            if cause is None:
                endpoint.failed_probes = 0
                ready = True  # successThreshold is 1
            else:
                failures = endpoint.pod.record.probe_failures
                failures[cause] = failures.get(cause, 0) + 1
                endpoint.failed_probes += 1
                threshold = settings.failure_threshold
                ready = endpoint.probed_ready and endpoint.failed_probes < threshold
            if ready != endpoint.probed_ready:
                endpoint.probed_ready = ready
                self._propagate(endpoint, ready)
            await asyncio.sleep(max(began + settings.probe_period - loop.time(), 0.0))

    def _propagate(self, endpoint: Endpoint, ready: bool) -> None:
        lag = self.settings.propagation_lag
        if lag <= 0:
            self._set_routed(endpoint, ready)
            return
        loop = asyncio.get_running_loop()

        def apply() -> None:
            self._timers.discard(timer)
            if not endpoint.removed:
                self._set_routed(endpoint, ready)

        timer = loop.call_later(lag, apply)
        self._timers.add(timer)

    def _set_routed(self, endpoint: Endpoint, routed: bool) -> None:
        if endpoint.routed == routed:
            return
        endpoint.routed = routed
        self._routable = [e for e in self._endpoints.values() if e.routed and not e.removed]
        now = self._clock()
        self.events.append((round(now, 3), endpoint.pod.name, "routed" if routed else "unrouted"))
        if routed and endpoint.pod.record.routed_at is None:
            endpoint.pod.record.routed_at = now
        self.changed.fire()

    def _pick(self) -> Endpoint | None:
        routable = self._routable
        if not routable:
            return None
        self._turn += 1
        return routable[self._turn % len(routable)]

    # -- traffic ----------------------------------------------------------------------

    def _error(self, status: int, kind: str) -> web.Response:
        self.upstream_errors[kind] += 1
        return web.Response(status=status, text=kind, headers={ERROR_HEADER: kind})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        endpoint = self._pick()
        if endpoint is None:
            return self._error(503, NO_ENDPOINTS)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read() if request.body_exists else None
        try:
            upstream = await endpoint.session.request(
                request.method,
                endpoint.pod.app_url + request.path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return self._error(502, classify(exc))
        try:
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            if upstream.headers.get("Transfer-Encoding", "").lower() != "chunked":
                try:
                    data = await upstream.read()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    return self._error(502, classify(exc))
                return web.Response(status=upstream.status, body=data, headers=out)
            return await self._stream(request, upstream, out)
        finally:
            upstream.release()

    async def _stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        while True:
            try:
                chunk = await upstream.content.readany()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.upstream_errors[classify(exc)] += 1
                # The response started: the client must see it cut, never complete.
                if request.transport is not None:
                    request.transport.abort()
                return response
            if not chunk:
                break
            try:
                await response.write(chunk)
            except ConnectionError:  # the client left
                return response
        await response.write_eof()
        return response

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        endpoint = self._pick()
        if endpoint is None:
            return self._error(503, NO_ENDPOINTS)
        try:
            upstream = await endpoint.session.ws_connect(
                endpoint.pod.app_url + request.path_qs, autoping=True
            )
        except aiohttp.WSServerHandshakeError as exc:
            return self._error(502, f"websocket handshake refused ({exc.status})")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return self._error(502, classify(exc))
        client = web.WebSocketResponse(autoping=True)
        try:
            await client.prepare(request)
        except ConnectionError:  # the client left during the handshake
            await upstream.close()
            return client
        pod_side = asyncio.create_task(_pump(upstream, client))
        client_side = asyncio.create_task(_pump(client, upstream))
        try:
            done, _ = await asyncio.wait(
                {pod_side, client_side}, return_when=asyncio.FIRST_COMPLETED
            )
            if pod_side in done:
                how, code = pod_side.result()
                pod_ended = how != "sink failed"
            else:
                how, code = client_side.result()
                pod_ended = how == "sink failed"
            if not pod_ended:  # the client ended the session: pass its close on
                await upstream.close(code=code or aiohttp.WSCloseCode.OK)
                return client
            pod_code = code
            if pod_code is None:  # the connection to the pod broke, no close frame
                self.upstream_errors["websocket to the pod lost"] += 1
                await client.close(code=BAD_GATEWAY, message=b"connection to the pod lost")
            else:
                self.ws_closes_from_pods[pod_code] += 1
                await client.close(code=pod_code, message=b"closed by the pod")
            return client
        finally:
            for task in (pod_side, client_side):
                task.cancel()
            await asyncio.gather(pod_side, client_side, return_exceptions=True)
            await upstream.close()


async def _pump(source: Any, sink: Any) -> tuple[str, int | None]:
    """Copy messages from ``source`` to ``sink`` until one side ends.

    Returns ``("closed", code)`` when ``source`` sent a close frame, ``("lost", None)``
    when it went away without one, ``("sink failed", None)`` when ``sink`` did. The code
    is read from the close frame itself: aiohttp sets ``close_code`` to 1006 when the
    peer drops the connection right after its close frame, before the reply is written.
    """
    while True:
        message = await source.receive()
        kind = message.type
        if kind is aiohttp.WSMsgType.CLOSE:
            return "closed", int(message.data)
        if kind not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return "lost", None  # CLOSING, CLOSED, ERROR
        try:
            if kind is aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            else:
                await sink.send_bytes(message.data)
        except (ConnectionError, RuntimeError):
            return "sink failed", None


# -- the load generator -------------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    restarted: int = 0  # WebSocket sessions the pod ended with 1012 (clean, not failed)
    failures: Counter[str] = field(default_factory=Counter)

    def record(self, failure: str | None) -> None:
        if failure is None:
            self.succeeded += 1
        else:
            self.failed += 1
            self.failures[failure] += 1


class Load:
    """A steady, bounded load through the load balancer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tallies = {kind: Tally() for kind in KINDS}
        self.served_by: Counter[str] = Counter()  # HTTP responses per pod (x-pod)
        self.max_behind = 0.0  # how far the pacer ever fell behind its schedule
        self.seconds = 0.0  # how long the load ran
        self._began = 0.0
        self._rng = random.Random(settings.seed)
        self._url = ""
        self._session: aiohttp.ClientSession | None = None
        self._stop = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._requests: set[asyncio.Task[None]] = set()

    async def open(self, url: str) -> None:
        """Get ready to send to ``url`` (the load balancer) without sending yet."""
        self._url = url
        connector = aiohttp.TCPConnector(limit=self.settings.max_in_flight)
        self._session = _no_retries(aiohttp.ClientSession(connector=connector))

    async def start(self, url: str) -> None:
        """Send the steady load until ``stop()``."""
        await self.open(url)
        self._began = asyncio.get_running_loop().time()
        self._loops.append(asyncio.create_task(self._pace()))
        for number in range(self.settings.websockets):
            self._loops.append(asyncio.create_task(self._websocket_loop(number)))

    async def stop(self) -> None:
        """Stop sending, let open requests and sessions end (each is bounded), close."""
        self._stop.set()
        self.seconds = asyncio.get_running_loop().time() - self._began
        await asyncio.gather(*self._loops)
        await asyncio.gather(*list(self._requests))
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def abort(self) -> None:
        """Teardown after an error: cancel everything at once."""
        self._stop.set()
        tasks = [*self._loops, *self._requests]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.close()

    def _choose(self) -> str:
        draw = self._rng.random()
        if draw < self.settings.slow_share:
            return "slow"
        if draw < self.settings.slow_share + self.settings.stream_share:
            return "stream"
        return "short"

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.settings.rate
        bound = asyncio.Semaphore(self.settings.max_in_flight)
        due = loop.time()
        while not self._stop.is_set():
            await bound.acquire()
            task = asyncio.create_task(self.request(self._choose()))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            task.add_done_callback(lambda _: bound.release())
            due += interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.max_behind = max(self.max_behind, -delay)
                if -delay > 1.0:  # too far behind: start afresh rather than burst
                    due = loop.time()

    def _path(self, kind: str) -> str:
        s = self.settings
        if kind == "slow":
            return f"/slow?seconds={s.slow_seconds:g}"
        if kind == "stream":
            return f"/stream?chunks={s.stream_chunks}&interval={s.stream_interval:g}"
        return "/short"

    async def request(self, kind: str) -> None:
        """Send one HTTP request of ``kind`` and record its outcome."""
        assert self._session is not None
        tally = self.tallies[kind]
        tally.sent += 1
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
        try:
            async with self._session.get(self._url + self._path(kind), timeout=timeout) as reply:
                body = await reply.read()
                failure = self._judge(kind, reply, body)
                if failure is None:
                    self.served_by[reply.headers.get("x-pod", "?")] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            failure = "client timeout" if isinstance(exc, TimeoutError) else classify(exc)
        tally.record(failure)

    def _judge(self, kind: str, reply: aiohttp.ClientResponse, body: bytes) -> str | None:
        if reply.status != 200:
            return reply.headers.get(ERROR_HEADER) or f"http {reply.status}"
        if kind == "stream":
            complete = body.endswith(b"end\n") and body.count(b"chunk ") == (
                self.settings.stream_chunks
            )
            return None if complete else "stream incomplete"
        return None if body == f"{kind} ok".encode() else "unexpected body"

    async def _websocket_loop(self, number: int) -> None:
        """Keep one WebSocket session open at a time, start the next when one ends."""
        while not self._stop.is_set():
            tally = self.tallies["websocket"]
            tally.sent += 1
            outcome = await self.websocket_session(number)
            if outcome == "restart":
                tally.restarted += 1
            else:
                tally.record(outcome)
                if outcome is not None:
                    await asyncio.sleep(self.settings.ws_interval)  # no tight retry loop

    async def websocket_session(self, number: int) -> str | None:
        """One session: None when it went well, ``"restart"`` on 1012, else the failure."""
        assert self._session is not None
        s = self.settings
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(s.request_timeout):
                ws = await self._session.ws_connect(self._url + "/ws", autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            error = exc.headers.get(ERROR_HEADER) if exc.headers else None
            return error or f"websocket handshake {exc.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return "client timeout" if isinstance(exc, TimeoutError) else classify(exc)
        try:
            ends = loop.time() + s.ws_session_seconds
            sequence = 0
            while loop.time() < ends and not self._stop.is_set():
                text = f"{number}:{sequence}"
                with contextlib.suppress(ConnectionError):  # the close explains it next
                    await ws.send_str(text)
                async with asyncio.timeout(s.request_timeout):
                    message = await ws.receive()
                if message.type is aiohttp.WSMsgType.CLOSE and message.data == SERVICE_RESTART:
                    return "restart"
                if message.type is not aiohttp.WSMsgType.TEXT:
                    # The code of the close frame, as in _pump; 1006: none arrived.
                    code = message.data if message.type is aiohttp.WSMsgType.CLOSE else 1006
                    return f"websocket closed abnormally ({code})"
                if message.data != text:
                    return "websocket wrong echo"
                sequence += 1
                await asyncio.sleep(s.ws_interval)
            async with asyncio.timeout(s.request_timeout):
                await ws.close(code=aiohttp.WSCloseCode.OK)
            return None
        except TimeoutError:
            return "client timeout"
        except (aiohttp.ClientError, OSError) as exc:
            return f"websocket: {classify(exc)}"
        finally:
            await ws.close()


# -- the rollout ----------------------------------------------------------------------------


@dataclass
class Report:
    settings: dict[str, Any]
    duration_seconds: float
    load_seconds: float  # how long the load generator sent
    sent: int
    succeeded: int
    failed: int
    websocket_restarts: int  # sessions closed by a pod with 1012: clean, counted apart
    failures: dict[str, int]
    by_kind: dict[str, dict[str, Any]]
    served_by_pod: dict[str, int]
    proxy_upstream_errors: dict[str, int]
    proxy_ws_closes_from_pods: dict[str, int]
    routing_events: list[tuple[float, str, str]]
    pacer_max_behind_seconds: float  # the load generator's worst lateness
    harness_max_stall_seconds: float  # the simulator's event loop's worst lateness
    pods: list[PodRecord]

    @property
    def requests_aborted(self) -> float:
        return sum(p.requests_aborted or 0 for p in self.pods)

    @property
    def exit_codes(self) -> dict[str, int | None]:
        return {p.name: p.exit_code for p in self.pods}

    def to_json(self) -> str:
        document = asdict(self)
        document["requests_aborted"] = self.requests_aborted
        return json.dumps(_rounded(document), indent=2)

    def summary(self) -> str:
        s = self.settings
        mode = (
            f"drain on: preStop, drain delay {s['drain_delay']:g}s"
            if s["drain"]
            else "drain off: no preStop, SIGTERM straight away, drain delay 0"
        )
        lines = [
            f"rollout simulation: {s['pods']} pods, {s['rollouts']} rollout(s), "
            f"{s['rate']:g} req/s + {s['websockets']} websockets, {mode}, "
            f"drain mode {s['drain_mode']}; probe every {s['probe_period']:g}s "
            f"(timeout {s['probe_timeout']:g}s), propagation lag {s['propagation_lag']:g}s",
            f"duration {self.duration_seconds:.1f}s, load for {self.load_seconds:.1f}s; "
            f"sent {self.sent}, succeeded "
            f"{self.succeeded}, failed {self.failed}, websocket sessions closed with 1012 "
            f"(clean, reconnected) {self.websocket_restarts}; requests aborted by pods "
            f"{self.requests_aborted:g}",
        ]
        for kind, tally in self.by_kind.items():
            lines.append(
                f"  {kind:9} sent {tally['sent']:6}  ok {tally['succeeded']:6}  "
                f"failed {tally['failed']:5}"
                + (f"  1012 {tally['restarted']}" if kind == "websocket" else "")
            )
        if self.failures:
            lines.append("failures by kind:")
            lines += [f"  {count:6}  {kind}" for kind, count in self.failures.items()]
        lines.append(
            "pod        exit  preStop  SIGTERM->exit  drain  served  aborted  lifespan shutdown"
        )
        for p in self.pods:
            lines.append(
                f"{p.name:10} {p.exit_code!s:>4}  {_sec(p.prestop_seconds):>7}  "
                f"{_sec(p.exit_seconds):>13}  {_sec(p.drain_seconds):>5}  "
                f"{_num(p.requests_served):>6}  {_num(p.requests_aborted):>7}  "
                f"{'yes' if p.lifespan_shutdown else 'NO'}" + (" (SIGKILL)" if p.killed else "")
            )
        return "\n".join(lines)


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to milliseconds (and tuples as lists)."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    return value


def _sec(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


class StallMeter:
    """Measure how late this event loop runs a periodic timer: the harness's own health.

    A loaded machine delays the load balancer, the probes and the load alike; a report
    with a large stall says so, instead of blaming the pods.
    """

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.max_stall = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.max_stall = max(self.max_stall, loop.time() - due)


async def simulate(settings: Settings, *, progress: Callable[[str], None] | None = None) -> Report:
    """Run one simulation from the first pod to the last exit; see the module docstring."""
    settings.check()
    loop = asyncio.get_running_loop()
    began = loop.time()

    def clock() -> float:
        return loop.time() - began

    def say(message: str) -> None:
        if progress is not None:
            progress(f"[{clock():6.2f}s] {message}")

    kubelet = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    proxy = Proxy(settings, kubelet, clock)
    load = Load(settings)
    stalls = StallMeter()
    stalls.start()
    pods: list[Pod] = []
    retiring: list[asyncio.Task[None]] = []
    # A gone pod drops out after its failed probes plus the lag; then it is deleted.
    probe_bound = settings.failure_threshold * (settings.probe_period + settings.probe_timeout)
    unroute_bound = probe_bound + settings.propagation_lag + 10

    async def start_pod(generation: int, slot: int) -> Pod:
        pod = Pod(f"gen{generation}-{slot}", generation, settings, kubelet, clock)
        pods.append(pod)
        await pod.start()
        proxy.add(pod)
        await proxy.wait_routed(pod.name, True, settings.pod_start_timeout)
        say(f"{pod.name} routed ({pod.record.routed_at:.2f}s)")
        return pod

    async def retire(pod: Pod) -> None:
        await proxy.wait_routed(pod.name, False, unroute_bound)
        await proxy.remove(pod.name)

    async def stop_pod(pod: Pod, *, under_load: bool = True) -> None:
        await pod.terminate(prestop=settings.drain)
        r = pod.record
        say(
            f"{pod.name} exited {r.exit_code} (preStop {_sec(r.prestop_seconds)}, "
            f"SIGTERM->exit {_sec(r.exit_seconds)})"
        )
        if under_load:  # the load balancer must notice it is gone
            retiring.append(asyncio.create_task(retire(pod)))

    completed = False
    try:
        await proxy.start()
        first = [start_pod(0, slot) for slot in range(settings.pods)]
        started = await asyncio.gather(*first, return_exceptions=True)
        for result in started:
            if isinstance(result, BaseException):
                raise result
        current = [pod for pod in started if isinstance(pod, Pod)]
        await load.start(proxy.url)
        say(f"load started: {settings.rate:g} req/s, {settings.websockets} websockets")
        await asyncio.sleep(settings.warmup)  # the load runs meanwhile
        for generation in range(1, settings.rollouts + 1):
            say(f"rollout {generation}")
            for slot, old in enumerate(list(current)):
                current[slot] = await start_pod(generation, slot)
                await stop_pod(old)
        await asyncio.sleep(settings.cooldown)
        await load.stop()
        say("load stopped; stopping the remaining pods")
        await asyncio.gather(*(stop_pod(pod, under_load=False) for pod in current))
        await asyncio.gather(*retiring)
        completed = True
    finally:
        if not completed:
            await load.abort()
            for task in retiring:
                task.cancel()
            await asyncio.gather(*retiring, return_exceptions=True)
        for pod in pods:
            await pod.kill()
        await proxy.stop()
        await kubelet.close()
        await stalls.stop()
    return _report(settings, clock(), load, proxy, pods, stalls.max_stall)


def _report(
    settings: Settings, duration: float, load: Load, proxy: Proxy, pods: list[Pod], stall: float
) -> Report:
    tallies = load.tallies
    failures: Counter[str] = Counter()
    for tally in tallies.values():
        failures.update(tally.failures)
    by_kind = {
        kind: {
            "sent": t.sent,
            "succeeded": t.succeeded,
            "failed": t.failed,
            "restarted": t.restarted,
            "failures": dict(t.failures),
        }
        for kind, t in tallies.items()
    }
    return Report(
        settings=asdict(settings),
        duration_seconds=round(duration, 3),
        load_seconds=round(load.seconds, 3),
        sent=sum(t.sent for t in tallies.values()),
        succeeded=sum(t.succeeded for t in tallies.values()),
        failed=sum(t.failed for t in tallies.values()),
        websocket_restarts=tallies["websocket"].restarted,
        failures=dict(failures.most_common()),
        by_kind=by_kind,
        served_by_pod=dict(sorted(load.served_by.items())),
        proxy_upstream_errors=dict(proxy.upstream_errors.most_common()),
        proxy_ws_closes_from_pods={str(k): v for k, v in proxy.ws_closes_from_pods.items()},
        routing_events=proxy.events,
        pacer_max_behind_seconds=round(load.max_behind, 3),
        harness_max_stall_seconds=round(stall, 3),
        pods=[pod.record for pod in pods],
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(settings: Settings, *, progress: Callable[[str], None] | None = None) -> Report:
    """Run ``simulate`` on a fresh event loop (uvloop when installed)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        main: Coroutine[Any, Any, Report] = simulate(settings, progress=progress)
        return runner.run(main)
