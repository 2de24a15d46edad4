"""The access log: request ids, trace ids, routes, and the fields of each line."""

from __future__ import annotations

import json
import logging
import re
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.config import ACCESS_LOG_FIELDS
from sidecar.logs import JsonFormatter
from sidecar.serving.access import UNMATCHED, client_text, request_id, route_of, trace_id

from .. import apps
from ..conftest import LOOPBACK, LogWatch, fetch

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# -- the pieces --------------------------------------------------------------------------


def test_a_sane_request_id_is_kept_anything_else_replaced() -> None:
    assert request_id("abc-123_XYZ:/=+") == ("abc-123_XYZ:/=+", False)
    for bad in (None, "", "has space", "x" * 201, "tab\there", "é"):
        value, generated = request_id(bad)
        assert generated
        assert re.fullmatch(r"[0-9a-f]{32}", value)
    assert request_id(None)[0] != request_id(None)[0]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (TRACEPARENT, "4bf92f3577b34da6a3ce929d0e0e4736"),
        (" " + TRACEPARENT + " ", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", (
            "4bf92f3577b34da6a3ce929d0e0e4736")),  # a later version may add fields
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),
        ("garbage", None),
        (None, None),
    ],
)  # fmt: skip
def test_trace_id_from_traceparent(header: str | None, expected: str | None) -> None:
    assert trace_id(header) == expected


def test_route_of() -> None:
    route = SimpleNamespace(path="/users/{user_id:int}")
    mount = SimpleNamespace(path="/static", routes=[])
    assert route_of(None) == UNMATCHED
    assert route_of({}) == UNMATCHED
    assert route_of({"route": route, "root_path": ""}) == "/users/{user_id:int}"
    assert route_of({"route": "/from/{app}"}) == "/from/{app}"
    assert route_of({"path_template": "/litestar/{id}"}) == "/litestar/{id}"
    assert route_of({"route": object()}) == UNMATCHED
    # below a mount, the mount's matched prefix comes first; the server's root_path not
    assert route_of({"route": route, "root_path": "/api/v1"}, "/api") == "/v1/users/{user_id:int}"
    assert route_of({"route": route, "root_path": "/api"}, "/api") == "/users/{user_id:int}"
    assert route_of({"route": mount, "root_path": "/static"}) == "/static"


def test_client_text() -> None:
    assert client_text(("10.0.0.1", 5000)) == "10.0.0.1:5000"
    assert client_text(["::1", 5000]) == "[::1]:5000"
    assert client_text(None) == "-"


# -- lines of a running sidecar ----------------------------------------------------------


def access_records(logs: LogWatch) -> list[logging.LogRecord]:
    return [record for record in logs.records if record.name == "sidecar.access"]


def test_the_fields_of_a_line(run_sidecar: Any, logs: LogWatch) -> None:
    running = run_sidecar(apps.routed, logging__access_log=True)
    reply = fetch(
        running.app("/items/7?q=1&x=%20"),
        headers={"X-Request-ID": "req-42", "traceparent": TRACEPARENT, "User-Agent": "probe/1"},
    )
    assert reply.headers["x-request-id"] == "req-42"  # returned as it came
    assert reply.text == "id req-42"
    logs.wait_for(r'"GET /items/7\?q=1&x=%20 HTTP/1.1" 200 OK')
    (record,) = access_records(logs)
    fields = {key: getattr(record, key) for key in ACCESS_LOG_FIELDS}
    assert fields.pop("duration_ms") >= 0
    assert fields.pop("client").startswith("127.0.0.1:")
    assert fields == {
        "method": "GET",
        "path": "/items/7",
        "route": "/items/{id}",
        "query": "q=1&x=%20",
        "status": 200,
        "bytes": len(b"id req-42"),
        "user_agent": "probe/1",
        "request_id": "req-42",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    document = json.loads(JsonFormatter().format(record))
    assert {key: document[key] for key in ("method", "route", "status", "request_id")} == {
        "method": "GET",
        "route": "/items/{id}",
        "status": 200,
        "request_id": "req-42",
    }


def test_a_generated_request_id_reaches_the_app_and_the_client(
    run_sidecar: Any, logs: LogWatch
) -> None:
    running = run_sidecar(apps.routed, logging__access_log=True)
    reply = fetch(running.app("/items/1"), headers={"X-Request-ID": "not a token"})
    generated = reply.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert reply.text == f"id {generated}"
    logs.wait_for("GET /items/1 ")
    (record,) = access_records(logs)
    assert record.request_id == generated
    assert record.trace_id is None
    assert record.user_agent is None or isinstance(record.user_agent, str)


def test_the_apps_own_request_id_is_not_doubled(run_sidecar: Any, logs: LogWatch) -> None:
    running = run_sidecar(apps.routed, logging__access_log=True)
    reply = fetch(running.app("/own-id"), headers={"X-Request-ID": "from-client"})
    assert [v for k, v in reply.raw_headers if k.lower() == "x-request-id"] == ["from-the-app"]


def test_unmatched_streamed_and_refused_requests(run_sidecar: Any, logs: LogWatch) -> None:
    running = run_sidecar(apps.routed, logging__access_log=True, server__max_body_size=10)
    assert fetch(running.app("/nowhere")).status == 404
    refused = fetch(running.app("/items/1"), "POST", body=b"x" * 100)
    assert refused.status == 413
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])
    logs.wait_for('"POST /items/1 HTTP/1.1" 413')
    unmatched, too_large = access_records(logs)
    assert (unmatched.route, unmatched.status, unmatched.bytes) == (UNMATCHED, 404, 8)
    assert (too_large.route, too_large.status) == (UNMATCHED, 413)
    assert too_large.request_id == refused.headers["x-request-id"]


def test_bytes_of_a_chunked_response(run_sidecar: Any, logs: LogWatch) -> None:
    running = run_sidecar(apps.streaming, logging__access_log=True)
    assert fetch(running.app("/")).body == b"part0;part1;part2;part3;part4;"
    logs.wait_for("GET / HTTP/1.1")
    (record,) = access_records(logs)
    assert record.bytes == 30


def test_without_the_access_log_no_request_id_is_added(run_sidecar: Any) -> None:
    running = run_sidecar(apps.routed)
    reply = fetch(running.app("/items/1"))
    assert "x-request-id" not in reply.headers
    assert reply.text == "id -"


# -- formats, through the CLI ------------------------------------------------------------


def test_json_access_log_has_the_fields_as_keys(cli: Any) -> None:
    proc = cli("run", "apps:routed", *LOOPBACK, "--log-format", "json", "--access-log",
               "--drain-delay", "0")  # fmt: skip
    proc.wait_line('"message": "serving the app on')
    url = proc.lines[-1].split("serving the app on ")[1].split('"')[0]
    fetch(url + "/items/3?a=b", headers={"X-Request-ID": "cli-1", "User-Agent": "t/1"})
    line = proc.wait_line('"logger": "sidecar.access"')
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    document = json.loads(line.string)
    assert set(ACCESS_LOG_FIELDS) <= set(document)
    assert document["message"].endswith('"GET /items/3?a=b HTTP/1.1" 200 OK ' + (
        f"{document['duration_ms']:.1f}ms"))  # fmt: skip
    assert (document["route"], document["query"], document["request_id"]) == (
        "/items/{id}", "a=b", "cli-1",
    )  # fmt: skip


def test_text_access_log_format_is_configurable(cli: Any) -> None:
    line_format = "%(method)s %(route)s %(status)d id=%(request_id)s"
    proc = cli("run", "apps:routed", *LOOPBACK, "--access-log", "--drain-delay", "0",
               "--access-log-format", line_format)  # fmt: skip
    proc.wait_serving()
    fetch(proc.app_url + "/items/9", headers={"X-Request-ID": "fmt-1"})
    proc.wait_line(r"sidecar.access: GET /items/\{id\} 200 id=fmt-1$")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_unknown_values_are_a_dash_in_the_text_line(run_sidecar: Any, logs: LogWatch) -> None:
    running = run_sidecar(
        apps.routed,
        logging__access_log=True,
        logging__access_log_format="ua=%(user_agent)s trace=%(trace_id)s route=%(route)s",
    )
    fetch(running.app("/nowhere"))  # http.client sends no User-Agent
    logs.wait_for("^ua=")
    (record,) = access_records(logs)
    assert record.getMessage() == "ua=- trace=- route=unmatched"
    assert record.user_agent is None
    assert record.trace_id is None  # JSON keeps null


def test_a_bad_access_log_format_is_a_configuration_error(tmp_path: Path) -> None:
    from sidecar.config import ConfigError, load_config

    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides={"logging.access_log_format": "%(nope)s %(status)d"})
    assert "unknown field 'nope'; expected %(field)s placeholders of: method, path" in str(
        caught.value
    )
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides={"logging.access_log_format": "%(route)d"})
    assert "invalid value '%(route)d' for logging.access_log_format" in str(caught.value)
