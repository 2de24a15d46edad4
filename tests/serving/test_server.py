"""The aiohttp <-> ASGI bridge over real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import pytest

from sidecar.errors import BindError
from sidecar.state import Phase

from .. import apps
from ..conftest import fetch, fetch_quietly


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)


def raw_request(url: str, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_http_scope_fields(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder, server__root_path="/api")
    conn = connect(running.app())
    conn.putrequest("GET", "/caf%C3%A9/a%2Fb?x=1&y=%20", skip_accept_encoding=True)
    conn.putheader("X-Dup", "one")
    conn.putheader("X-Dup", "two")
    conn.putheader("X-Mixed-Case", "Value")
    conn.endheaders()
    assert conn.getresponse().read()
    local = conn.sock.getsockname()
    conn.close()
    scope = recorder.scopes[-1]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/café/a/b"
    assert scope["raw_path"] == b"/api/caf%C3%A9/a%2Fb"
    assert scope["query_string"] == b"x=1&y=%20"
    headers = scope["headers"]
    assert all(name == name.lower() for name, _ in headers)
    assert [v for n, v in headers if n == b"x-dup"] == [b"one", b"two"]
    assert (b"x-mixed-case", b"Value") in headers
    assert headers[0][0] == b"host"  # order kept as sent
    assert scope["client"] == (local[0], local[1])
    assert scope["server"] == running.sidecar.app_server.address
    assert scope["state"]["name"] == "recorder"


def test_http_10_request(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder)
    reply = raw_request(running.app(), b"GET /old HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 200")
    assert recorder.scopes[-1]["http_version"] == "1.0"


def test_request_body_arrives_in_chunks_with_more_body(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder)
    conn = connect(running.app())
    conn.putrequest("POST", "/upload")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for _ in range(3):
        piece = b"x" * 100_000
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")
    document = json.loads(conn.getresponse().read())
    conn.close()
    assert document["body_len"] == 300_000
    messages = recorder.messages[-1]
    assert all(m["type"] == "http.request" for m in messages)
    assert [m["more_body"] for m in messages][-1] is False
    assert all(m["more_body"] for m in messages[:-1])


def test_request_without_body_gets_one_empty_message(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder)
    assert fetch(running.app("/")).status == 200
    assert recorder.messages[-1] == [{"type": "http.request", "body": b"", "more_body": False}]


def test_post_with_content_length(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder)
    reply = fetch(running.app("/echo"), "POST", body=b"a" * 5000)
    assert reply.json()["body_len"] == 5000


def test_client_disconnect_reaches_a_streaming_app(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder)
    conn = connect(running.app())
    conn.request("GET", "/wait-disconnect")
    response = conn.getresponse()
    assert response.read(9) == b"streaming"
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert recorder.disconnected.wait(30)
    assert recorder.messages[-1][-1] == {"type": "http.disconnect"}


def test_streamed_response_uses_chunked_encoding(run_sidecar: Any) -> None:
    running = run_sidecar(apps.streaming)
    reply = fetch(running.app("/"))
    assert reply.headers.get("transfer-encoding") == "chunked"
    assert reply.body == b"part0;part1;part2;part3;part4;"


def test_single_body_response_gets_a_content_length(run_sidecar: Any) -> None:
    running = run_sidecar(apps.http_only)
    reply = fetch(running.app("/"))
    assert reply.headers["content-length"] == "2"
    assert "transfer-encoding" not in reply.headers


def test_head_sends_headers_only(run_sidecar: Any) -> None:
    running = run_sidecar(apps.http_only)
    reply = fetch(running.app("/"), "HEAD")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers["content-length"] == "2"


def test_keep_alive_serves_several_requests_on_one_connection(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder)
    conn = connect(running.app())
    ports = set()
    for index in range(3):
        conn.request("GET", f"/n{index}")
        assert conn.getresponse().read()
        ports.add(recorder.scopes[-1]["client"][1])
    conn.close()
    assert len(ports) == 1


def test_pipelined_requests_are_answered_in_order(run_sidecar: Any) -> None:
    recorder = apps.Recorder()
    running = run_sidecar(recorder)
    data = b"".join(
        b"GET /p%d HTTP/1.1\r\nHost: x\r\n%s\r\n" % (i, b"Connection: close\r\n" if i == 2 else b"")
        for i in range(3)
    )
    reply = raw_request(running.app(), data)
    assert reply.count(b"HTTP/1.1 200") == 3
    assert reply.index(b'"/p0"') < reply.index(b'"/p1"') < reply.index(b'"/p2"')


def test_exception_before_the_response_gives_500(
    run_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    running = run_sidecar(apps.faulty)
    reply = fetch(running.app("/raise-before"))
    assert reply.status == 500
    assert "boom before the response" in caplog.text
    logged = [r for r in caplog.records if r.exc_info and "boom" in str(r.exc_info[1])]
    assert len(logged) == 1
    assert fetch(running.app("/fine")).status == 200  # keeps serving


def test_exception_after_the_response_started_closes_the_connection(run_sidecar: Any) -> None:
    running = run_sidecar(apps.faulty)
    conn = connect(running.app())
    conn.request("GET", "/raise-after")
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    conn.close()
    assert fetch(running.app("/fine")).status == 200


@pytest.mark.parametrize("path", ["/no-response", "/bad-message", "/two-starts"])
def test_app_that_does_not_respond_properly_gives_500(
    run_sidecar: Any, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    running = run_sidecar(apps.faulty)
    assert fetch(running.app(path)).status == 500
    if path in ("/bad-message", "/two-starts"):
        assert "UnexpectedMessageError" in caplog.text
    else:
        assert "ASGI app returned without sending the response" in caplog.text


def test_responses_after_the_listener_closed_carry_connection_close(run_sidecar: Any) -> None:
    app = apps.SlowRequests()
    running = run_sidecar(app, shutdown__drain_mode="fixed")
    conn = connect(running.app())
    conn.request("GET", "/slow")
    assert app.entered.wait(30)
    running.sidecar.request_shutdown()
    running.phases.wait_for(Phase.STOPPING)
    app.release()
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("connection") == "close"  # do not reuse: the pod is leaving
    response.read()
    conn.close()
    assert running.wait_finished() is None


def test_graceful_stop_waits_for_in_flight_requests(run_sidecar: Any) -> None:
    app = apps.SlowRequests()
    running = run_sidecar(app, shutdown__drain_mode="fixed")
    result: dict[str, int] = {}
    slow = threading.Thread(target=lambda: result.update(status=fetch(running.app("/slow")).status))
    slow.start()
    assert app.entered.wait(30)
    running.sidecar.request_shutdown()
    running.phases.wait_for(Phase.STOPPING)
    app.release()
    slow.join(30)
    assert running.wait_finished() is None
    assert result["status"] == 200
    assert app.shutdown_ran.is_set()


def test_requests_waiting_for_disconnect_end_when_the_listener_closes(run_sidecar: Any) -> None:
    app = apps.SlowRequests()
    running = run_sidecar(app, shutdown__graceful_timeout=30)
    result: dict[str, int] = {}
    client = threading.Thread(
        target=lambda: result.update(status=fetch(running.app("/until-disconnect")).status)
    )
    client.start()
    assert app.entered.wait(30)
    assert running.stop() is None  # does not wait the 30 s graceful timeout
    client.join(30)
    assert app.saw_disconnect.is_set()
    assert app.shutdown_ran.is_set()
    assert result["status"] == 503  # the client still gets an answer
    assert running.sidecar.app_server.aborted == 0


def test_second_shutdown_request_skips_the_drain(run_sidecar: Any) -> None:
    app = apps.SlowRequests()
    running = run_sidecar(app, shutdown__drain_delay=60, shutdown__graceful_timeout=60)
    running.sidecar.request_shutdown()
    running.phases.wait_for(Phase.DRAINING)
    running.sidecar.request_shutdown()
    assert running.wait_finished() is None
    assert app.shutdown_ran.is_set()


def test_app_port_in_use_is_a_bind_error(run_sidecar: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        running = run_sidecar(apps.SlowRequests(), wait=False, server__port=port)
        error = running.wait_finished()
    assert isinstance(error, BindError)
    assert f"127.0.0.1:{port}" in str(error)
    assert "server.port" in str(error)


def test_declared_length_longer_than_the_body_closes_the_connection(
    run_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    running = run_sidecar(apps.framing)
    reply = raw_request(running.app(), b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.endswith(b"\r\n\r\nabc")  # the server closed instead of hanging the client
    assert b"connection: close" in reply
    assert "declared content-length 10 but sent 3 bytes" in caplog.text


def test_body_longer_than_declared_is_cut_to_the_declared_length(run_sidecar: Any) -> None:
    running = run_sidecar(apps.framing)
    reply = raw_request(running.app(), b"GET /long HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.endswith(b"\r\n\r\nab")


def test_header_with_a_line_break_is_refused_with_500(run_sidecar: Any) -> None:
    running = run_sidecar(apps.framing)
    reply = fetch(running.app("/injection"))
    assert reply.status == 500
    assert "set-cookie" not in reply.headers


def test_204_has_no_body_and_no_length(run_sidecar: Any) -> None:
    running = run_sidecar(apps.framing)
    reply = raw_request(
        running.app(), b"GET /no-content HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"content-length" not in reply.lower()
    assert b"transfer-encoding" not in reply.lower()


def test_connection_close_from_the_client_is_honoured(run_sidecar: Any) -> None:
    running = run_sidecar(apps.framing)
    reply = raw_request(running.app(), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"connection: close\r\n" in reply
    assert reply.endswith(b"ok")


def test_http_10_keep_alive_and_close_delimited_streams(run_sidecar: Any) -> None:
    running = run_sidecar(apps.streaming)
    reply = raw_request(running.app(), b"GET / HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"transfer-encoding" not in reply.lower()  # chunked does not exist in HTTP/1.0
    assert reply.endswith(b"part0;part1;part2;part3;part4;")
    running = run_sidecar(apps.framing)
    conn = connect(running.app())
    conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"  # type: ignore[attr-defined]
    conn.request("GET", "/", headers={"Connection": "keep-alive"})
    response = conn.getresponse()
    assert response.getheader("connection") == "keep-alive"
    assert response.read() == b"ok"
    conn.close()


def test_head_on_a_streaming_app_sends_no_body(run_sidecar: Any) -> None:
    running = run_sidecar(apps.streaming)
    reply = raw_request(running.app(), b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.endswith(b"\r\n\r\n")
    assert b"part0" not in reply


def test_a_request_that_ignores_disconnect_is_cancelled_at_the_deadline(
    run_sidecar: Any,
) -> None:
    app = apps.IgnoresDisconnect()
    running = run_sidecar(app, shutdown__graceful_timeout=0.1)
    client = threading.Thread(target=fetch_quietly, args=(running.app("/"),))
    client.start()
    assert app.entered.wait(30)
    assert running.stop() is None
    client.join(30)
    assert app.cancelled.is_set()
    assert running.sidecar.app_server.aborted == 1


def test_idle_drain_keeps_the_listener_open_until_requests_finish(run_sidecar: Any) -> None:
    app = apps.SlowRequests()
    running = run_sidecar(app, shutdown__drain_mode="idle", shutdown__graceful_timeout=30)
    result: dict[str, int] = {}
    slow = threading.Thread(target=lambda: result.update(status=fetch(running.app("/slow")).status))
    slow.start()
    assert app.entered.wait(30)
    running.sidecar.request_shutdown()
    running.phases.wait_for(Phase.DRAINING)
    running.sync()  # the drain delay (0 here) is over: the idle wait has begun
    # the listener is still open: a late request (routed before the endpoint update) is served
    assert fetch(running.app("/late")).status == 200
    assert Phase.STOPPING not in running.phases.phases()
    app.release()
    slow.join(30)
    assert running.wait_finished() is None
    assert result["status"] == 200
    assert running.sidecar.app_server.aborted == 0
