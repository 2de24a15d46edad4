"""A raw ASGI app: what the servers decide on their own, and the deliberate differences."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ..conftest import LOOPBACK, fetch
from ..parity import ParityClient, Servers, WsSeen, http, run_scenario, serve_both

TARGET = "tests.frameworks.raw_app:app"
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with serve_both(TARGET) as both:
        yield both


def test_framing_without_a_declared_length(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/one-message")
        await client.http("HEAD", "/one-message")
        await client.http("GET", "/parts")
        await client.http("HEAD", "/parts")
        await client.http("POST", "/echo", body=[b"chunked ", b"request ", b"body"])
        await client.http("GET", "/elsewhere")

    seen = servers.compare(scenario)  # framing differences reconciled, everything else equal
    one = http(seen, 0)
    assert (one.body, one.headers) == (b"whole", (("content-length", "5"),))
    assert http(seen, 1).headers == (("content-length", "5"),)  # what GET would send
    parts = http(seen, 2)
    assert (parts.body, parts.headers) == (b"ab", (("transfer-encoding", "chunked"),))
    assert http(seen, 3).headers == ()  # no length known, no body: no framing header
    assert http(seen, 4).body == b"chunked request body"
    assert (http(seen, 5).status, http(seen, 5).body) == (404, b"no such path")


def test_the_servers_own_500(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/raise")
        await client.http("GET", "/nothing")  # returned without responding

    seen = servers.compare(scenario)
    for reply in (http(seen, 0), http(seen, 1)):
        assert (reply.status, reply.body) == (500, b"Internal Server Error")
        assert reply.headers == (
            ("content-length", "21"),
            ("content-type", "text/plain; charset=utf-8"),
        )


def test_header_names_keep_the_apps_spelling(servers: Servers) -> None:
    # Deliberate: the sidecar writes the app's header bytes as they are; uvicorn lowercases.
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/Mixed-Case")

    ours = http(run_scenario(servers.sidecar.app_url, scenario), 0)
    theirs = http(run_scenario(servers.uvicorn.app_url, scenario), 0)
    assert ("X-Mixed-Case", "Value") in ours.raw_headers
    assert ("x-mixed-case", "Value") in theirs.raw_headers
    assert ours.headers == theirs.headers  # what compare() looks at


def test_websocket_refused_before_accept(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        with pytest.raises(Exception, match="403"):
            async with client.websocket("/ws/deny"):
                pass
        async with client.websocket("/ws/accept") as ws:
            await ws.receive()

    assert servers.compare(scenario) == [
        WsSeen("refused", 403),
        WsSeen("accepted", None, ()),
        WsSeen("close", 1000, ""),
    ]

    # Deliberate: the sidecar's 403 says why in a short text body; uvicorn's is empty.
    async def refused(client: ParityClient) -> None:
        await client.http("GET", "/ws/deny", headers=UPGRADE)

    ours = http(run_scenario(servers.sidecar.app_url, refused), 0)
    theirs = http(run_scenario(servers.uvicorn.app_url, refused), 0)
    assert (ours.status, ours.body, ours.header("content-type")) == (
        403,
        b"Forbidden",
        "text/plain; charset=utf-8",
    )
    assert (theirs.status, theirs.body) == (403, b"")


def test_startup_that_raises_is_a_failure_not_unsupported(cli: Any) -> None:
    # Deliberate (docs/lifespan.md): with lifespan auto, uvicorn calls a startup that
    # raised "unsupported" and serves the app; the sidecar refuses to serve it.
    target = "tests.frameworks.raw_app:startup_raises"
    sidecar = cli("run", target, *LOOPBACK, "--lifespan", "auto")
    uvicorn = cli(target, "--port", "0", "--lifespan", "auto", module="uvicorn")
    assert sidecar.wait() == 3
    assert "the app raised while handling lifespan.startup" in sidecar.log()
    uvicorn.wait_line("ASGI 'lifespan' protocol appears unsupported")
    bound = uvicorn.wait_line(r"Uvicorn running on (http://[\d.]+:\d+)")
    assert fetch(bound.group(1) + "/").body == b"served without startup"
