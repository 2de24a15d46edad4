"""Django's ASGI handler under ``sidecar run``, compared with uvicorn; its lack of lifespan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import LOOPBACK
from ..parity import HttpSeen, ParityClient, Servers, http, serve_both, write_data_file
from . import DATA_DIR_ENV, FILE_NAME

TARGET = "tests.frameworks.django_app:application"
SECURITY_HEADERS = (
    ("cross-origin-opener-policy", "same-origin"),
    ("referrer-policy", "same-origin"),
    ("x-content-type-options", "nosniff"),
)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("django-data")
    write_data_file(directory, size=10_000)
    return directory / FILE_NAME


@pytest.fixture(scope="module")
def servers(data_file: Path) -> Iterator[Servers]:
    # lifespan auto on both: Django does not speak lifespan, and with "on" neither starts.
    with serve_both(TARGET, lifespan="auto", env={DATA_DIR_ENV: str(data_file.parent)}) as both:
        yield both


def test_auto_lifespan_serves_django_without_lifespan(servers: Servers) -> None:
    line = servers.sidecar.wait_line("does not support the ASGI lifespan protocol").string
    assert "ValueError: Django can only handle ASGI/HTTP connections, not lifespan." in line
    assert "serving without it" in line
    servers.uvicorn.wait_line("ASGI 'lifespan' protocol appears unsupported")


def test_lifespan_on_refuses_to_start_django(cli: Any) -> None:
    proc = cli("run", TARGET, *LOOPBACK, "--lifespan", "on")
    assert proc.wait() == 3
    log = proc.log()
    assert "the app failed to start (exception)" in log
    assert "before receiving lifespan.startup (lifespan.mode is 'on')" in log
    assert "Django can only handle ASGI/HTTP connections, not lifespan." in log
    assert "serving the app on" not in log


def test_views(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/")
        await client.http("HEAD", "/")
        await client.http("GET", "/info/?a=1&b=%20x", headers={"User-Agent": "matrix/1.0"})
        await client.http("GET", "/nope/")

    seen = servers.compare(scenario)
    index = http(seen, 0)
    assert index.body == b"hello from django\n"
    assert index.headers == (
        ("content-length", "18"),
        ("content-type", "text/plain; charset=utf-8"),
        *SECURITY_HEADERS,
    )
    head = http(seen, 1)
    assert (head.body, head.headers) == (b"", index.headers)
    info = http(seen, 2)
    assert json.loads(info.body) == {
        "method": "GET",
        "path": "/info/",
        "query": {"a": "1", "b": " x"},
        "scheme": "http",
        "host": "testserver",
        "agent": "matrix/1.0",
    }
    missing = http(seen, 3)
    assert missing.status == 404
    assert missing.header("content-type") == "text/html; charset=utf-8"
    assert b"<h1>Not Found</h1>" in missing.body


def test_post_and_method_not_allowed(servers: Servers) -> None:
    body = json.dumps({"name": "x" * 5000}).encode()

    async def scenario(client: ParityClient) -> None:
        await client.http("POST", "/echo/", body=body, headers={"Content-Type": "application/json"})
        await client.http("POST", "/echo/", body=[b'{"chunked"', b": true}"])
        await client.http("GET", "/echo/")

    seen = servers.compare(scenario)
    echoed = http(seen, 0)
    assert echoed.status == 201
    assert echoed.header("x-body-length") == str(len(body))
    assert json.loads(echoed.body) == {"received": {"name": "x" * 5000}}
    chunked = http(seen, 1)
    assert (chunked.status, chunked.body) == (201, b'{"received": {"chunked": true}}')
    not_allowed = http(seen, 2)
    assert (not_allowed.status, not_allowed.header("allow")) == (405, "POST")


def test_streaming_cookie_and_file_responses(servers: Servers, data_file: Path) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/stream/")
        await client.http("GET", "/cookie/")
        await client.http("GET", "/file/")

    seen = servers.compare(scenario)
    stream = http(seen, 0)
    assert stream.body == b"chunk 0\nchunk 1\nchunk 2\n"
    assert stream.header("transfer-encoding") == "chunked"
    assert stream.header("content-length") is None
    cookie = http(seen, 1)
    assert cookie.header_list("set-cookie") == ["csrftoken-ish=xyz; HttpOnly; Path=/; SameSite=Lax"]
    download = http(seen, 2)
    assert download.body == data_file.read_bytes()
    assert download.header("content-length") == str(data_file.stat().st_size)
    assert download.header("content-type") == "text/csv"
    assert download.header("content-disposition") == 'attachment; filename="report.csv"'


def test_append_slash_redirect(servers: Servers) -> None:
    async def scenario(client: ParityClient) -> None:
        await client.http("GET", "/info?x=1")

    (seen,) = servers.compare(scenario)
    assert isinstance(seen, HttpSeen)
    assert (seen.status, seen.header("location"), seen.body) == (301, "/info/?x=1", b"")
