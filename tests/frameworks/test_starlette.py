"""Starlette under ``sidecar run``, compared with uvicorn serving the same app."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from ..conftest import fetch
from ..parity import HttpSeen, ParityClient, Servers, WsSeen, http, serve_both, write_data_file
from . import DATA_DIR_ENV, FILE_NAME

TARGET = "tests.frameworks.starlette_app:app"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("starlette-data")
    write_data_file(directory)
    return directory / FILE_NAME


@pytest.fixture(scope="module")
def servers(data_file: Path) -> Iterator[Servers]:
    with serve_both(TARGET, env={DATA_DIR_ENV: str(data_file.parent)}) as both:
        yield both
    # SIGTERM ran the lifespan's shutdown half in both servers.
    for name in ("sidecar", "uvicorn"):
        assert both.stdout[name] == "starlette lifespan shutdown: pool closed\n", name


def test_lifespan_state_is_shared_between_requests(servers: Servers) -> None:
    # Only on the sidecar: the counter would drift between the two servers otherwise.
    first = fetch(servers.sidecar.app_url + "/")
    second = fetch(servers.sidecar.app_url + "/")
    assert first.body == b'{"name":"starlette","open":true,"queries":1}'
    assert first.headers["content-type"] == "application/json"
    assert first.headers["content-length"] == str(len(first.body))
    assert second.json()["queries"] == 2  # the pool object from the lifespan is shared


def test_routing(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/users/42")
        await client.http("GET", "/users/alice")
        await client.http("GET", "/api/users/7")
        await client.http("GET", "/query/a%20b/c%2Fd?x=1&x=2&y=%C3%A9")
        await client.http("GET", "/missing")
        await client.http("POST", "/users/1")
        await client.http("GET", "/moved")
        await client.http("DELETE", "/empty")
        await client.http(
            "PUT", "/echo", body=b'{"a": [1, 2]}', headers={"Content-Type": "application/json"}
        )
        await client.http("HEAD", "/users/3")

    seen = servers.compare(scenario)
    user = http(seen, 0)
    assert (user.status, user.body) == (200, b'{"id":42,"type":"int"}')
    assert user.headers == (("content-length", "22"), ("content-type", "application/json"))
    assert http(seen, 1).body == b"user alice"
    assert http(seen, 1).header("content-type") == "text/plain; charset=utf-8"
    assert http(seen, 2).body == b'{"id":7,"type":"int"}'
    query = http(seen, 3)
    assert query.body == (
        b'{"path":"/query/a b/c/d","query":[["x","1"],["x","2"],["y","\xc3\xa9"]],'
        b'"raw_path":"/query/a%20b/c%2Fd"}'
    )
    missing = http(seen, 4)
    assert (missing.status, missing.reason, missing.body) == (404, "Not Found", b"Not Found")
    wrong_method = http(seen, 5)
    assert (wrong_method.status, wrong_method.header("allow")) == (405, "GET, HEAD")
    moved = http(seen, 6)
    assert (moved.status, moved.header("location"), moved.body) == (308, "/users/1", b"")
    empty = http(seen, 7)
    assert (empty.status, empty.body, empty.header("content-length")) == (204, b"", None)
    echo = http(seen, 8)
    assert echo.body == b'{"a": [1, 2]}'
    assert echo.header("content-type") == "application/json"
    head = http(seen, 9)
    assert (head.status, head.body, head.header("content-length")) == (200, b"", "21")


def test_streaming_response(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/stream")
        await client.http("HEAD", "/stream")

    seen = servers.compare(scenario)
    get, head = http(seen, 0), http(seen, 1)
    assert get.body == b"line 0\nline 1\nline 2\n"
    assert get.headers == (
        ("content-type", "text/plain; charset=utf-8"),
        ("transfer-encoding", "chunked"),
        ("x-parts", "3"),
    )
    assert head.body == b""


def test_file_response(servers: Servers, data_file: Path) -> None:
    data = data_file.read_bytes()
    stat = data_file.stat()

    async def scenario(client: ParityClient) -> None:
        full = await client.http("GET", "/file")
        etag = full.header("etag") or ""
        await client.http("HEAD", "/file")
        await client.http("GET", "/file", headers={"Range": "bytes=10-19"})
        await client.http("GET", "/file", headers={"Range": "bytes=999999-"})
        await client.http("GET", f"/static/{FILE_NAME}", headers={"If-None-Match": etag})

    seen = servers.compare(scenario)
    full, head, part, unsatisfiable, not_modified = (http(seen, i) for i in range(5))
    assert full.status == 200
    assert full.body == data
    assert len(data) > 64 * 1024  # more than one chunk of Starlette's file reader
    etag = full.header("etag")
    assert etag is not None
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert full.header("last-modified") == formatdate(stat.st_mtime, usegmt=True)
    assert full.header("content-length") == str(len(data))
    assert full.header("content-type") == "text/csv; charset=utf-8"
    assert full.header("content-disposition") == 'attachment; filename="report.csv"'
    assert full.header("accept-ranges") == "bytes"
    assert full.header("transfer-encoding") is None
    assert head.headers == full.headers
    assert head.body == b""
    # StaticFiles serves the same file with the same validators, and honours them.
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert not_modified.header("etag") == etag
    assert not_modified.header("content-length") is None
    assert (part.status, part.body) == (206, data[10:20])
    assert part.header("content-range") == f"bytes 10-19/{len(data)}"
    assert part.header("content-length") == "10"
    assert unsatisfiable.status == 416
    assert (unsatisfiable.header("content-range") or "").endswith(f"*/{len(data)}")
    assert hashlib.sha256(full.body).digest() == hashlib.sha256(data).digest()


def test_cookies(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/cookies")

    (seen,) = servers.compare(scenario)
    assert isinstance(seen, HttpSeen)
    assert seen.header_list("set-cookie") == [
        "session=abc123; HttpOnly; Path=/; SameSite=strict",
        "theme=dark; Max-Age=3600; Path=/; SameSite=lax",
    ]
    assert seen.body == b"cookies set"


def test_websocket_endpoint(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        async with client.websocket("/ws", protocols=("chat.v1", "chat.v0")) as ws:
            await ws.receive()  # the greeting, with the lifespan state's name
            await ws.send_str("hi")
            await ws.receive()
            await ws.send_str("bye")
            await ws.receive()
        async with client.websocket("/ws/raw") as ws:
            await ws.send_bytes(b"\x00abc\xff")
            await ws.receive()
            await ws.receive()

    seen = servers.compare(scenario)
    assert seen == [
        WsSeen("accepted", "chat.v1", (("sec-websocket-protocol", "chat.v1"), ("x-room", "lobby"))),
        WsSeen("text", '{"hello":"starlette"}'),
        WsSeen("text", "echo: hi"),
        WsSeen("close", 4001, "bye to you"),
        WsSeen("accepted", None, ()),
        WsSeen("bytes", b"\xffcba\x00"),
        WsSeen("close", 1000, ""),
    ]


def test_websocket_to_an_http_route_is_refused(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        with pytest.raises(Exception, match="403"):
            async with client.websocket("/users/1"):
                pass

    assert servers.compare(scenario) == [WsSeen("refused", 403)]
