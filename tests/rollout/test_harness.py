"""The simulator's load balancer and load generator against fake pods.

The rollout figures are only as good as the harness's counting: these tests pin down what
is a failure (a refused or dropped connection, never retried; a cut stream; a WebSocket
whose pod vanished) and what is not (a pod closing a WebSocket with 1012).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from .simulator import ROOT, Load, Pod, PodRecord, Proxy, Settings

SETTINGS = Settings(probe_period=0.05, failure_threshold=1, propagation_lag=0, request_timeout=10)


class FakePod:
    """What the load balancer needs of a pod: a name, a record and two URLs."""

    def __init__(self, name: str, app_url: str, admin_url: str) -> None:
        self.name = name
        self.app_url = app_url
        self.admin_url = admin_url
        self.record = PodRecord(name, 0)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def admin_app(ready: Callable[[], bool] = lambda: True) -> web.Application:
    async def readyz(request: web.Request) -> web.Response:
        return web.Response(status=200 if ready() else 503)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    return app


@asynccontextmanager
async def balancer(
    app_url: str, settings: Settings = SETTINGS, ready: Callable[[], bool] = lambda: True
) -> AsyncIterator[tuple[Proxy, Load]]:
    """A load balancer routing to one fake pod, and a load generator (not pacing)."""
    admin_runner, admin_url = await serve(admin_app(ready))
    kubelet = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    loop = asyncio.get_running_loop()
    proxy = Proxy(settings, kubelet, loop.time)
    load = Load(settings)
    try:
        await proxy.start()
        proxy.add(FakePod("fake", app_url, admin_url))  # type: ignore[arg-type]
        await proxy.wait_routed("fake", True, 10)
        await load.open(proxy.url)
        yield proxy, load
    finally:
        await load.close()
        await proxy.stop()
        await kubelet.close()
        await admin_runner.cleanup()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_is_a_failure() -> None:
    async def main() -> None:
        async with balancer(f"http://127.0.0.1:{free_port()}") as (proxy, load):
            await load.request("short")
            assert load.tallies["short"].failures == {"connection refused": 1}
            assert proxy.upstream_errors == {"connection refused": 1}

    run(main)


def test_a_dropped_keep_alive_connection_is_a_failure_not_retried() -> None:
    """The pod closes a kept-alive connection under a request: counted, never resent."""
    requests = 0

    async def pod(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        served_here = 0
        while await reader.readuntil(b"\r\n\r\n"):
            requests += 1
            served_here += 1
            if served_here == 2:  # the second request on this connection: hang up
                break
            body = b"short ok"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(pod, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with balancer(f"http://127.0.0.1:{port}") as (proxy, load):
                await load.request("short")
                await load.request("short")  # reuses the kept-alive connection
                tally = load.tallies["short"]
                assert (tally.succeeded, dict(tally.failures)) == (1, {"server disconnected": 1})
                assert proxy.upstream_errors == {"server disconnected": 1}
                assert requests == 2  # a retry would have been a third
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_a_stream_cut_by_the_pod_is_cut_for_the_client() -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"chunk 0\n")
        assert request.transport is not None
        request.transport.abort()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/stream", stream)
        runner, url = await serve(app)
        try:
            async with balancer(url) as (proxy, load):
                await load.request("stream")
                assert load.tallies["stream"].failures == {"response cut": 1}
                assert proxy.upstream_errors == {"response cut": 1}
        finally:
            await runner.cleanup()

    run(main)


def websocket_pod(after_echo: Callable[[web.WebSocketResponse], Awaitable[Any]]) -> web.Application:
    """A pod whose /ws echoes one message, then does ``after_echo``."""

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        message = await socket_.receive()
        await socket_.send_str(message.data)
        await after_echo(socket_)
        return socket_

    app = web.Application()
    app.router.add_get("/ws", ws)
    return app


def test_a_websocket_closed_with_1012_is_a_clean_restart() -> None:
    async def close_1012(ws: web.WebSocketResponse) -> None:
        await ws.close(code=1012, message=b"server shutting down")

    async def main() -> None:
        runner, url = await serve(websocket_pod(close_1012))
        try:
            async with balancer(url) as (proxy, load):
                assert await load.websocket_session(0) == "restart"
                assert proxy.ws_closes_from_pods == {1012: 1}
                assert not proxy.upstream_errors
        finally:
            await runner.cleanup()

    run(main)


def test_a_websocket_whose_pod_vanishes_is_a_failure() -> None:
    async def vanish(ws: web.WebSocketResponse) -> None:
        request = ws._req
        assert request is not None
        assert request.transport is not None
        request.transport.abort()

    async def main() -> None:
        runner, url = await serve(websocket_pod(vanish))
        try:
            async with balancer(url) as (proxy, load):
                assert await load.websocket_session(0) == "websocket closed abnormally (1014)"
                assert proxy.upstream_errors == {"websocket to the pod lost": 1}
        finally:
            await runner.cleanup()

    run(main)


def test_an_unready_pod_keeps_traffic_for_the_propagation_lag() -> None:
    ready = True
    settings = Settings(probe_period=0.05, failure_threshold=2, propagation_lag=0.5)

    async def short(request: web.Request) -> web.Response:
        return web.Response(text="short ok")

    async def main() -> None:
        nonlocal ready
        app = web.Application()
        app.router.add_get("/short", short)
        runner, url = await serve(app)
        loop = asyncio.get_running_loop()
        try:
            async with balancer(url, settings, lambda: ready) as (proxy, load):
                ready = False
                turned = loop.time()
                await proxy.wait_routed("fake", False, 10)
                assert loop.time() - turned >= settings.propagation_lag
                await load.request("short")
                assert load.tallies["short"].failures == {"no ready endpoints": 1}
        finally:
            await runner.cleanup()

    run(main)


def test_pods_run_the_sidecar_and_app_of_this_checkout() -> None:
    pod = Pod("check", 0, Settings(), kubelet=None, clock=lambda: 0.0)  # type: ignore[arg-type]
    code = "import sidecar, tests.rollout.app as a; print(sidecar.__file__); print(a.__file__)"
    found = subprocess.run(
        [sys.executable, "-c", code],
        env=pod.environment(),
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert found == [str(ROOT / "sidecar" / "__init__.py"), str(ROOT / "tests/rollout/app.py")]


def test_a_pod_stops_by_itself_when_the_simulator_goes_away() -> None:
    """No pod outlives a simulator that was killed: its stdin closes, the app stops it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as kubelet:
            pod = Pod("orphan", 0, Settings(drain_delay=0.5), kubelet, loop.time)
            try:
                await pod.start()
                pod.abandon()
                assert await pod.wait_exit(30) == 0
            finally:
                await pod.kill()
        log = "\n".join(pod.lines)
        assert "the simulator is gone" in log, log
        assert pod.record.lifespan_shutdown, log

    run(main)
