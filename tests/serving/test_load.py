"""Bounded load on loopback: probes stay prompt under saturation; overload loses nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from .. import apps

LOAD_SECONDS = 2.0  # bounded: the test stops on its own
WORKERS = 48


async def _saturate(app_url: str, admin_url: str) -> tuple[list[int], list[float], list[str]]:
    statuses: list[int] = []
    probe_latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + LOAD_SECONDS
    connector = aiohttp.TCPConnector(limit=WORKERS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                try:
                    async with session.get(app_url) as response:
                        await response.read()
                        statuses.append(response.status)
                except aiohttp.ClientError as exc:
                    errors.append(repr(exc))

        async def prober() -> None:
            async with aiohttp.ClientSession() as probes:
                while time.monotonic() < deadline:
                    began = time.monotonic()
                    async with probes.get(admin_url) as response:
                        await response.read()
                        assert response.status == 200
                    probe_latencies.append(time.monotonic() - began)
                    await asyncio.sleep(0.05)  # a probe every 50 ms, like an eager kubelet

        await asyncio.gather(prober(), *(worker() for _ in range(WORKERS)))
    return statuses, probe_latencies, errors


def test_admin_probes_stay_prompt_while_the_app_port_is_saturated(run_sidecar: Any) -> None:
    running = run_sidecar(apps.http_only)
    statuses, latencies, errors = asyncio.run(_saturate(running.app("/"), running.admin("/readyz")))
    assert errors == []
    assert set(statuses) == {200}
    assert len(statuses) > 500
    assert len(latencies) >= 10
    # the kubelet's default probe timeout is 1 s; stay far below it
    assert max(latencies) < 0.5, sorted(latencies)[-5:]


def test_overload_beyond_the_connection_cap_answers_every_request(run_sidecar: Any) -> None:
    app = apps.SlowRequests()
    running = run_sidecar(app, server__max_connections=4, server__max_requests_in_flight=0)

    async def main() -> tuple[list[int], list[str]]:
        statuses: list[int] = []
        errors: list[str] = []
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            holders = [asyncio.ensure_future(session.get(running.app("/slow"))) for _ in range(4)]
            await asyncio.get_running_loop().run_in_executor(None, app.entered.wait, 30)

            async def one() -> None:
                try:
                    async with session.get(running.app("/fast")) as response:
                        await response.read()
                        statuses.append(response.status)
                except aiohttp.ClientError as exc:
                    errors.append(repr(exc))

            await asyncio.gather(*(one() for _ in range(40)))
            app.release()
            for response in await asyncio.gather(*holders):
                statuses.append(response.status)
                response.release()
        return statuses, errors

    statuses, errors = asyncio.run(main())
    assert errors == []  # every accepted connection got an answer, none was reset
    assert statuses.count(503) >= 1
    assert set(statuses) <= {200, 503}
    assert len(statuses) == 44


def test_the_app_keeps_serving_while_metrics_are_hammered(run_sidecar: Any) -> None:
    running = run_sidecar(apps.http_only)

    async def main() -> tuple[list[int], list[int], list[str]]:
        app_statuses: list[int] = []
        scrape_statuses: list[int] = []
        errors: list[str] = []
        deadline = time.monotonic() + LOAD_SECONDS
        async with aiohttp.ClientSession() as session:

            async def scraper() -> None:
                while time.monotonic() < deadline:
                    async with session.get(running.admin("/metrics")) as response:
                        await response.read()
                        scrape_statuses.append(response.status)

            async def client() -> None:
                while time.monotonic() < deadline:
                    try:
                        async with session.get(running.app("/")) as response:
                            await response.read()
                            app_statuses.append(response.status)
                    except aiohttp.ClientError as exc:
                        errors.append(repr(exc))

            await asyncio.gather(*(scraper() for _ in range(8)), *(client() for _ in range(8)))
        return app_statuses, scrape_statuses, errors

    app_statuses, scrape_statuses, errors = asyncio.run(main())
    assert errors == []
    assert set(app_statuses) == {200}
    assert set(scrape_statuses) == {200}
    assert len(app_statuses) > 100  # the app was served throughout, not starved
