"""FastAPI under ``sidecar run``, compared with uvicorn serving the same app."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ..parity import HttpSeen, ParityClient, Servers, WsSeen, http, serve_both

TARGET = "tests.frameworks.fastapi_app:app"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with serve_both(TARGET) as both:
        yield both
    for name in ("sidecar", "uvicorn"):
        assert both.stdout[name] == "fastapi lifespan shutdown\n", name


def test_dependency_reads_lifespan_state(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/greeting?name=ops")
        await client.http("GET", "/items/5?q=x")
        await client.http("GET", "/openapi.json")

    seen = servers.compare(scenario)
    greeting = http(seen, 0)
    assert greeting.body == b'{"message":"hello from fastapi, ops"}'
    assert greeting.headers == (("content-length", "37"), ("content-type", "application/json"))
    assert http(seen, 1).body == b'{"item_id":5,"q":"x","greeting":"hello from fastapi"}'
    assert "/items/{item_id}" in json.loads(http(seen, 2).body)["paths"]


def test_request_body_validation(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        item = {"name": "widget", "price": 2.5, "tags": ["a"]}
        await client.http("POST", "/items", body=json.dumps(item).encode(), headers=JSON)
        bad = {"name": "", "price": -1}
        await client.http("POST", "/items", body=json.dumps(bad).encode(), headers=JSON)
        await client.http("POST", "/items", body=b'{"name": "x", ', headers=JSON)
        await client.http("GET", "/items/not-a-number")
        # the same valid body, sent chunked: the app must see all of it
        await client.http("POST", "/items", body=[b'{"name": "wid', b'get", "price": 2.5}'],
                          headers=JSON)  # fmt: skip

    seen = servers.compare(scenario)
    created = http(seen, 0)
    assert created.status == 201
    assert created.body == b'{"created":{"name":"widget","price":2.5,"tags":["a"]}}'
    invalid = http(seen, 1)
    assert invalid.status == 422
    assert invalid.header("content-type") == "application/json"
    problems = {(e["loc"][-1], e["type"]) for e in json.loads(invalid.body)["detail"]}
    assert problems == {("name", "string_too_short"), ("price", "greater_than")}
    malformed = http(seen, 2)
    assert malformed.status == 422
    assert json.loads(malformed.body)["detail"][0]["type"] == "json_invalid"
    assert http(seen, 3).status == 422
    assert http(seen, 4).body == b'{"created":{"name":"widget","price":2.5,"tags":[]}}'


def test_form_with_file_upload(servers: Servers) -> None:
    payload = bytes(range(256)) * 300  # binary, larger than one read from the socket
    boundary = "sidecar-form-boundary"
    body = b"".join(
        [
            f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\n'.encode(),
            b"Q3 report\r\n",
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="q3.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode(),
            payload,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    async def scenario(client: ParityClient) -> None:
        await client.http("POST", "/upload", body=body, headers=form)

    (seen,) = servers.compare(scenario)
    assert isinstance(seen, HttpSeen)
    assert json.loads(seen.body) == {
        "title": "Q3 report",
        "filename": "q3.bin",
        "content_type": "application/octet-stream",
        "size": len(payload),
    }


def test_http_exception_and_unhandled_error(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/teapot")
        await client.http("GET", "/crash")

    seen = servers.compare(scenario)
    teapot = http(seen, 0)
    assert (teapot.status, teapot.reason) == (418, "I'm a Teapot")
    assert teapot.body == b'{"detail":"short and stout"}'
    assert teapot.header("x-kind") == "teapot"
    crash = http(seen, 1)
    assert (crash.status, crash.body) == (500, b"Internal Server Error")
    assert crash.header("content-type") == "text/plain; charset=utf-8"


def test_response_arrives_before_the_background_task_finishes(servers: Servers) -> None:
    # The job waits for a release that only the client sends: a 202 while its state is
    # "waiting" proves the response was sent before the background task ended.
    async def scenario(client: ParityClient) -> None:
        await client.http("POST", "/jobs/report")
        await client.http("GET", "/jobs/report")
        await client.http("POST", "/jobs/report/release")
        await client.http("GET", "/jobs/report/wait")

    seen = servers.compare(scenario)
    replies = [http(seen, index) for index in range(4)]
    assert [(reply.status, json.loads(reply.body)) for reply in replies] == [
        (202, {"queued": "report", "state": "waiting"}),
        (200, {"name": "report", "state": "waiting"}),
        (200, {"released": "report"}),
        (200, {"name": "report", "state": "done"}),
    ]


def test_keep_alive_connection_is_free_while_a_background_task_runs(servers: Servers) -> None:
    # The next request on the same connection is answered while the job still waits,
    # as it is on fresh connections: work after the response does not hold the connection.
    async def scenario(client: ParityClient) -> None:
        await client.http("POST", "/jobs/keepalive", keep_alive=True)
        await client.http("GET", "/jobs/keepalive", keep_alive=True)
        await client.http("POST", "/jobs/keepalive/release", keep_alive=True)
        await client.http("GET", "/jobs/keepalive/wait", keep_alive=True)

    seen = servers.compare(scenario)
    assert [json.loads(http(seen, index).body) for index in range(4)] == [
        {"queued": "keepalive", "state": "waiting"},
        {"name": "keepalive", "state": "waiting"},
        {"released": "keepalive"},
        {"name": "keepalive", "state": "done"},
    ]


def test_websocket_with_path_parameter_and_dependency(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        async with client.websocket("/ws/lobby") as ws:
            await ws.send_json({"n": 1})
            await ws.receive()
            await ws.send_json({"action": "leave"})
            await ws.receive()
        async with client.websocket("/ws/kitchen") as ws:
            await ws.send_json({"n": 2})
            await ws.receive()
            await ws.close(code=4100, reason=b"client leaves")

    assert servers.compare(scenario) == [
        WsSeen("accepted", None, ()),
        WsSeen("text", '{"room":"lobby","greeting":"hello from fastapi","got":{"n":1}}'),
        WsSeen("close", 4002, "left lobby"),
        WsSeen("accepted", None, ()),
        WsSeen("text", '{"room":"kitchen","greeting":"hello from fastapi","got":{"n":2}}'),
        WsSeen("closed", 4100),
    ]
