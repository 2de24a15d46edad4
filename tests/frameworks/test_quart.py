"""Quart under ``sidecar run``, compared with uvicorn serving the same app."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from ..parity import ParityClient, Servers, WsSeen, http, serve_both

TARGET = "tests.frameworks.quart_app:app"


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with serve_both(TARGET) as both:
        yield both
    # after_serving ran in both, after the same requests.
    assert re.fullmatch(r"quart after_serving: \d+ note\(s\)\n", both.stdout["sidecar"])
    assert both.stdout["sidecar"] == both.stdout["uvicorn"]


def test_before_serving_state_and_json(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/")
        await client.http("GET", "/plain")
        await client.http("HEAD", "/plain")
        await client.http("GET", "/missing")
        await client.http("POST", "/")

    seen = servers.compare(scenario)
    index = http(seen, 0)
    assert index.body == b'{"framework":"quart","greeting":"hello from quart"}\n'
    assert index.headers == (("content-length", "52"), ("content-type", "application/json"))
    plain = http(seen, 1)
    assert plain.body == b"plain text\n"
    assert plain.headers == (
        ("content-length", "11"),
        ("content-type", "text/plain; charset=utf-8"),
    )
    head = http(seen, 2)
    assert (head.body, head.headers) == (b"", plain.headers)
    assert http(seen, 3).status == 404
    not_allowed = http(seen, 4)
    assert (not_allowed.status, not_allowed.header("allow")) == (405, "GET, HEAD, OPTIONS")


def test_post_route_with_cookie(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        json_body = {"Content-Type": "application/json"}
        await client.http("POST", "/notes", body=b'{"text": "buy milk"}', headers=json_body)
        await client.http("POST", "/notes", body=b"[1, 2]", headers=json_body)

    seen = servers.compare(scenario)
    created = http(seen, 0)
    assert created.status == 201
    note = json.loads(created.body)
    assert note["text"] == "buy milk"
    assert created.header_list("set-cookie") == [f"notes={note['id']}; HttpOnly; Path=/"]
    rejected = http(seen, 1)
    assert (rejected.status, rejected.body) == (400, b'{"error":"expected {\'text\': str}"}\n')


def test_websocket(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        async with client.websocket("/ws") as ws:
            await ws.send_str("hi")
            await ws.receive()
            await ws.send_bytes(b"\x01\x02")
            await ws.receive()
            await ws.send_str("close")
            await ws.receive()

    assert servers.compare(scenario) == [
        WsSeen("accepted", None, (("x-greeting", "hello from quart"),)),
        WsSeen("text", '{"echo": "hi"}'),
        WsSeen("bytes", b"\x02\x01"),
        WsSeen("close", 4004, "quart says bye"),
    ]
