"""Litestar under ``sidecar run``, compared with uvicorn serving the same app."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from ..parity import ParityClient, Servers, WsSeen, http, serve_both

TARGET = "tests.frameworks.litestar_app:app"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with serve_both(TARGET) as both:
        yield both
    # The on_shutdown hook ran in both, after the same requests.
    assert re.fullmatch(r"litestar shutdown: \d+ order\(s\)\n", both.stdout["sidecar"])
    assert both.stdout["sidecar"] == both.stdout["uvicorn"]


def test_startup_hook_state_and_json_routes(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/")
        await client.http("GET", "/items/4?detail=yes")
        await client.http("GET", "/items/four")
        await client.http("GET", "/text")
        await client.http("DELETE", "/")

    seen = servers.compare(scenario)
    index = http(seen, 0)
    assert index.body == b'{"greeting":"hello from litestar","framework":"litestar"}'
    assert index.headers == (("content-length", "57"), ("content-type", "application/json"))
    assert http(seen, 1).body == b'{"id":4,"detail":"yes"}'
    assert http(seen, 2).status == 404
    text = http(seen, 3)
    assert (text.body, text.header("content-type")) == (b"GET /text", "text/plain; charset=utf-8")
    not_allowed = http(seen, 4)
    assert (not_allowed.status, not_allowed.header("allow")) == (405, "GET, OPTIONS")


def test_post_route_with_validation_and_cookie(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        order = json.dumps({"item": "tea", "quantity": 2}).encode()
        await client.http("POST", "/orders", body=order, headers=JSON)
        await client.http("POST", "/orders", body=b'{"item": "tea"}', headers=JSON)
        await client.http("POST", "/orders", body=b"not json", headers=JSON)

    seen = servers.compare(scenario)
    placed = http(seen, 0)
    assert placed.status == 201
    number = json.loads(placed.body)["number"]
    assert placed.body == b'{"item":"tea","quantity":2,"number":%d}' % number
    assert placed.header("x-order-count") == str(number)
    assert placed.header_list("set-cookie") == ["last-order=tea; HttpOnly; Path=/; SameSite=lax"]
    missing_field = http(seen, 1)
    assert missing_field.status == 400
    (problem,) = json.loads(missing_field.body)["extra"]
    assert problem["message"] == "Object missing required field `quantity`"
    assert http(seen, 2).status == 400


def test_stream_then_another_request_on_the_same_connection(servers: Servers) -> None:
    # Litestar's Stream keeps listening for http.disconnect until receive() returns: the
    # end of the response must end that wait, or the connection never serves again.
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/stream", keep_alive=True)
        await client.http("GET", "/text", keep_alive=True)

    seen = servers.compare(scenario)
    stream = http(seen, 0)
    assert stream.body == b"part 0\npart 1\npart 2\n"
    assert stream.header("transfer-encoding") == "chunked"
    assert stream.header("content-type") == "text/plain; charset=utf-8"
    assert http(seen, 1).body == b"GET /text"


def test_websocket(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        async with client.websocket("/ws", protocols=("echo.v1",)) as ws:
            await ws.send_str("hi")
            await ws.receive()
            await ws.send_str("close")
            await ws.receive()

    assert servers.compare(scenario) == [
        WsSeen("accepted", "echo.v1", (("sec-websocket-protocol", "echo.v1"),)),
        WsSeen("text", '{"echo":"hi","greeting":"hello from litestar"}'),
        WsSeen("close", 4003, "done"),
    ]
