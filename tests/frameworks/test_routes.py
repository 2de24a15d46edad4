"""Route labels with real frameworks: the template their router matched, read from the scope.

Each app runs under ``sidecar run``; requests on routes with parameters, under a prefix
or a mount, and on no route at all are counted, and /metrics is read back.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from ..conftest import LOOPBACK, CliProcess, fetch
from ..metrics_util import scrape_samples


@pytest.fixture
def serve(cli: Any) -> Iterator[Any]:
    started: list[CliProcess] = []

    def start(target: str, *extra: str, env: dict[str, str] | None = None) -> CliProcess:
        proc: CliProcess = cli("run", target, *LOOPBACK, "--drain-delay", "0", *extra, env=env)
        proc.wait_serving()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0


def requests_by_route(proc: CliProcess) -> dict[tuple[str, str, str], float]:
    samples = scrape_samples(fetch(proc.admin_url + "/metrics").text)
    return {
        (dict(labels)["method"], dict(labels)["route"], dict(labels)["code"]): value
        for (name, labels), value in samples.items()
        if name == "sidecar_http_requests_total"
    }


def get(proc: CliProcess, path: str, method: str = "GET", **kwargs: Any) -> int:
    return fetch(proc.app_url + path, method, **kwargs).status


def test_fastapi(serve: Any) -> None:
    proc = serve("tests.frameworks.fastapi_app:app", "--access-log", "--log-format", "json")
    assert get(proc, "/items/5") == 200
    assert get(proc, "/items/6?q=x") == 200
    assert get(proc, "/v1/orders/9") == 200
    body = json.dumps({"name": "pen", "price": 1.5}).encode()
    assert get(proc, "/items", "POST", body=body, headers={"content-type": "application/json"})
    assert get(proc, "/nowhere") == 404
    assert get(proc, "/crash") == 500
    counts = requests_by_route(proc)
    assert counts[("GET", "/items/{item_id}", "200")] == 2
    assert counts[("GET", "/v1/orders/{order_id}", "200")] == 1
    assert counts[("POST", "/items", "201")] == 1
    assert counts[("GET", "unmatched", "404")] == 1
    assert counts[("GET", "/crash", "500")] == 1
    samples = scrape_samples(fetch(proc.admin_url + "/metrics").text)
    histogram = {
        (dict(labels)["route"], dict(labels)["status_class"]): value
        for (name, labels), value in samples.items()
        if name == "sidecar_http_request_duration_seconds_count"
    }
    assert histogram[("/crash", "5xx")] == 1
    assert histogram[("/items/{item_id}", "2xx")] == 2
    # The access log carries the same route.
    line = proc.wait_line(r'"logger": "sidecar.access".*/v1/orders/9')
    assert json.loads(line.string)["route"] == "/v1/orders/{order_id}"


def test_starlette(serve: Any) -> None:
    proc = serve("tests.frameworks.starlette_app:app")
    assert get(proc, "/users/42") == 200
    assert get(proc, "/users/alice") == 200
    assert get(proc, "/api/users/7") == 200  # a route inside a Mount
    assert get(proc, "/static/nothing.txt") == 404  # the Mount of StaticFiles took it
    assert get(proc, "/users/1", "POST") == 405
    assert get(proc, "/missing") == 404
    counts = requests_by_route(proc)
    assert counts[("GET", "/users/{user_id:int}", "200")] == 1
    assert counts[("GET", "/users/{name:str}", "200")] == 1
    assert counts[("GET", "/api/users/{user_id:int}", "200")] == 1
    assert counts[("GET", "/static", "404")] == 1
    assert counts[("POST", "/users/{user_id:int}", "405")] == 1
    assert counts[("GET", "unmatched", "404")] == 1


def test_litestar(serve: Any) -> None:
    proc = serve("tests.frameworks.litestar_app:app")
    assert get(proc, "/items/3") == 200
    assert get(proc, "/items/4?detail=x") == 200
    assert get(proc, "/") == 200
    assert get(proc, "/nowhere") == 404
    counts = requests_by_route(proc)
    assert counts[("GET", "/items/{item_id}", "200")] == 2  # Litestar drops the type
    assert counts[("GET", "/", "200")] == 1
    assert counts[("GET", "unmatched", "404")] == 1


def test_django_with_the_route_middleware(serve: Any) -> None:
    proc = serve("tests.frameworks.django_app:application")
    assert get(proc, "/items/3/") == 200
    assert get(proc, "/items/4/") == 200
    assert get(proc, "/info/") == 200
    assert get(proc, "/") == 200
    assert get(proc, "/nowhere/") == 404
    counts = requests_by_route(proc)
    assert counts[("GET", "/items/<int:pk>/", "200")] == 2
    assert counts[("GET", "/info/", "200")] == 1
    assert counts[("GET", "/", "200")] == 1
    assert counts[("GET", "unmatched", "404")] == 1


def test_routes_past_max_routes_count_as_other(serve: Any) -> None:
    proc = serve("tests.frameworks.fastapi_app:app", env={"SIDECAR_METRICS_MAX_ROUTES": "1"})
    assert get(proc, "/items/1") == 200
    assert get(proc, "/v1/orders/2") == 200
    assert get(proc, "/teapot") == 418
    assert get(proc, "/nowhere") == 404
    counts = requests_by_route(proc)
    assert counts == {
        ("GET", "/items/{item_id}", "200"): 1,
        ("GET", "other", "200"): 1,
        ("GET", "other", "418"): 1,
        ("GET", "unmatched", "404"): 1,
    }
