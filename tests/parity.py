"""Run one client scenario against the sidecar and against uvicorn, and diff what it saw.

A *scenario* is an async function that talks to a server through a ``ParityClient``:
HTTP requests (``client.http``) and WebSocket conversations (``client.websocket``). The
client records what a user of the server can observe — status, reason, headers, body,
the WebSocket handshake, every message and the close code — and ``compare`` runs the
scenario once against each server and asserts that both records are equal.

Both servers are real subprocesses on loopback serving the same app module:
``python -m sidecar run`` and ``python -m uvicorn`` (httptools, wsproto, uvloop as
available, the same defaults otherwise). Requests carry ``Host: testserver`` so that
nothing the app derives from the Host header (redirect locations, absolute URLs) depends
on the port each server happened to bind.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from http.client import HTTPConnection
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .conftest import LOOPBACK, WAIT, CliProcess, Reply, fetch, read_reply
from .frameworks import FILE_NAME

HOST = "testserver"

#: Response headers left out of the comparison, each with the reason it legitimately
#: differs. Everything else the app or the server sends must be identical.
IGNORED_HEADERS: dict[str, str] = {
    "date": "the clock; both servers add one when the app does not",
    "server": "uvicorn adds `server: uvicorn`; the sidecar sends none (aiohttp's own on "
    "WebSocket handshakes)",
}

#: WebSocket handshake headers that are protocol mechanics rather than app output:
#: the accept key is derived from the client's random nonce, and the spelling of the
#: `Connection`/`Upgrade` values differs between implementations (both are valid;
#: the client checks them case-insensitively).
IGNORED_HANDSHAKE_HEADERS: dict[str, str] = {
    **IGNORED_HEADERS,
    "sec-websocket-accept": "derived from the client's random Sec-WebSocket-Key",
    "connection": "`Upgrade` vs `upgrade`: tokens are case-insensitive",
    "upgrade": "`websocket` vs `WebSocket`: tokens are case-insensitive",
}


#: What the sidecar does differently on purpose (docs/serving.md, "Differences from uvicorn");
#: ``compare`` accepts exactly these and nothing else:
#: - a body the app sends in one message without a Content-Length: the sidecar knows the
#:   whole body and sends `content-length`; uvicorn decides when the response starts and
#:   sends it chunked. Same bytes either way.
#: - the answer to HEAD when the app gives no Content-Length: the sidecar sends the length
#:   of the body the app produced for it (what GET would send); uvicorn sends no length.
#: - the 500 the server sends for an app that failed before responding: uvicorn adds
#:   `connection: close` and drops the connection; the sidecar keeps it (the request was
#:   read whole, nothing is left half-done on it).
#: - a WebSocket the app refuses before accepting: both answer 403; the sidecar's has a
#:   `text/plain` body ("Forbidden"), uvicorn's is empty. Only the status is recorded.
#: Header names are compared lowercased: uvicorn lowercases them, the sidecar sends the
#: app's bytes as they are (both valid, names are case-insensitive).
DELIBERATE_DIFFERENCES = (
    "content-length for a complete single-message body, where uvicorn chunks",
    "content-length on HEAD from the body the app produced, where uvicorn sends none",
    "no connection: close on the server's own 500, where uvicorn closes",
    "response header names as the app sent them, where uvicorn lowercases them",
    "a WebSocket refused before the accept: 403 with a text body, where uvicorn's is empty",
)
SERVER_ERROR = b"Internal Server Error"


def _kept(headers: list[tuple[str, str]], ignored: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The compared headers, names lowercased, grouped by name in the order they came."""
    return _sorted(
        [(name.lower(), value) for name, value in headers if name.lower() not in ignored]
    )


@dataclass(frozen=True)
class HttpSeen:
    """One HTTP exchange as the client saw it."""

    request: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: Every header as received, ignored ones included (not compared).
    raw_headers: list[tuple[str, str]] = field(compare=False, repr=False)

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.raw_headers if key.lower() == name.lower()]
        return values[0] if values else None

    def header_list(self, name: str) -> list[str]:
        return [value for key, value in self.raw_headers if key.lower() == name.lower()]


@dataclass(frozen=True)
class WsSeen:
    """One WebSocket event as the client saw it: handshake, message or close."""

    event: str
    data: Any = None
    extra: Any = None


Seen = HttpSeen | WsSeen


def http(seen: list[Seen], index: int) -> HttpSeen:
    """``seen[index]``, which must be an HTTP exchange."""
    item = seen[index]
    assert isinstance(item, HttpSeen), item
    return item


class RecordingWebSocket:
    """An aiohttp client WebSocket whose handshake and received messages are recorded."""

    def __init__(self, client: ParityClient, path: str, protocols: tuple[str, ...]) -> None:
        self._client = client
        self._path = path
        self._protocols = protocols
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> RecordingWebSocket:
        record = self._client.seen.append
        url = self._client.url(self._path).replace("http://", "ws://", 1)
        try:
            self._ws = await self._client.session.ws_connect(
                url, protocols=self._protocols, headers={"Host": HOST}, autoclose=False
            )
        except aiohttp.WSServerHandshakeError as exc:
            record(WsSeen("refused", exc.status))  # the body differs: DELIBERATE_DIFFERENCES
            raise
        response = self._ws._response
        headers = [(k.decode(), v.decode()) for k, v in response.raw_headers]
        record(WsSeen("accepted", self._ws.protocol, _kept(headers, IGNORED_HANDSHAKE_HEADERS)))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()

    @property
    def ws(self) -> aiohttp.ClientWebSocketResponse:
        assert self._ws is not None
        return self._ws

    async def send_str(self, data: str) -> None:
        await self.ws.send_str(data)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def send_json(self, data: Any) -> None:
        await self.ws.send_json(data)

    async def receive(self) -> WsSeen:
        """Receive one message and record it; a close frame is answered and recorded."""
        message = await self.ws.receive(timeout=WAIT)
        if message.type is aiohttp.WSMsgType.CLOSE:
            await self.ws.close()
            seen = WsSeen("close", message.data, message.extra)
        elif message.type is aiohttp.WSMsgType.TEXT:
            seen = WsSeen("text", message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            seen = WsSeen("bytes", message.data)
        else:
            seen = WsSeen(message.type.name.lower(), None)
        self._client.seen.append(seen)
        return seen

    async def close(self, code: int = 1000, reason: bytes = b"") -> None:
        """Close from the client side and record the code the server echoed."""
        await self.ws.close(code=code, message=reason)
        self._client.seen.append(WsSeen("closed", self.ws.close_code))


class ParityClient:
    """What a scenario talks to: one server, with everything it observes recorded."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session
        self.seen: list[Seen] = []
        self._connection: HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    def url(self, path: str) -> str:
        return self.base_url + path

    async def http(
        self,
        method: str,
        path: str,
        *,
        body: bytes | list[bytes] | None = None,
        headers: dict[str, str] | None = None,
        keep_alive: bool = False,
    ) -> HttpSeen:
        """One request on a fresh connection (``http.client``, which leaves bytes alone).

        A list ``body`` is sent chunked, one chunk per item. ``keep_alive`` sends it on
        this client's one persistent connection instead, after the requests before it.
        """
        headers = {"Host": HOST, **(headers or {})}
        if keep_alive:
            reply = await asyncio.to_thread(self._on_connection, method, path, body, headers)
        else:
            reply = await asyncio.to_thread(
                fetch, self.url(path), method, body=body, headers=headers
            )
        seen = HttpSeen(
            request=f"{method} {path}",
            status=reply.status,
            reason=reply.reason,
            headers=_kept(reply.raw_headers, IGNORED_HEADERS),
            body=reply.body,
            raw_headers=reply.raw_headers,
        )
        self.seen.append(seen)
        return seen

    def _on_connection(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Reply:
        if self._connection is None:
            parts = urlsplit(self.base_url)
            self._connection = HTTPConnection(parts.hostname, parts.port, timeout=WAIT)
        conn = self._connection
        conn.request(method, path, body=body, headers=headers)
        return read_reply(conn.getresponse())

    def websocket(self, path: str, *, protocols: tuple[str, ...] = ()) -> RecordingWebSocket:
        return RecordingWebSocket(self, path, protocols)


Scenario = Callable[[ParityClient], Awaitable[None]]


def run_scenario(base_url: str, scenario: Scenario) -> list[Seen]:
    async def main() -> list[Seen]:
        async with aiohttp.ClientSession() as session:
            client = ParityClient(base_url, session)
            try:
                await scenario(client)
            finally:
                client.close()
            return client.seen

    return asyncio.run(main())


@dataclass
class Servers:
    """The sidecar and uvicorn serving the same app; ``compare`` runs scenarios on both."""

    sidecar: CliProcess
    uvicorn: CliProcess
    #: Each server's stdout, filled in once it has stopped.
    stdout: dict[str, str] = field(default_factory=dict)

    def compare(self, scenario: Scenario) -> list[Seen]:
        """Run ``scenario`` on both servers; assert they agree; return what the sidecar gave."""
        sidecar = run_scenario(self.sidecar.app_url, scenario)
        uvicorn = run_scenario(self.uvicorn.app_url, scenario)
        pairs = zip(sidecar, uvicorn, strict=False)
        reconciled = [_reconciled(ours, theirs) for ours, theirs in pairs]
        reconciled += sidecar[len(uvicorn) :]
        assert reconciled == uvicorn, "the sidecar (left) and uvicorn (right) disagree"
        return sidecar


def _reconciled(ours: Seen, theirs: Seen) -> Seen:
    """``ours`` as uvicorn would have sent it, where only DELIBERATE_DIFFERENCES set them apart."""
    if not isinstance(ours, HttpSeen) or not isinstance(theirs, HttpSeen):
        return ours
    close = ("connection", "close")
    server_error = (ours.status, ours.body) == (theirs.status, theirs.body) == (500, SERVER_ERROR)
    if server_error and close in theirs.headers and close not in ours.headers:
        ours = replace(ours, headers=_sorted([*ours.headers, close]))
    our_names = {name for name, _ in ours.headers}
    their_names = {name for name, _ in theirs.headers}
    if (
        ours.body != theirs.body
        or "transfer-encoding" in our_names
        or "content-length" in their_names
    ):
        return ours
    chunked = ("transfer-encoding", "chunked")
    if ours.request.startswith("HEAD ") and "transfer-encoding" not in their_names:
        headers = [pair for pair in ours.headers if pair[0] != "content-length"]
    elif chunked in theirs.headers and ("content-length", str(len(ours.body))) in ours.headers:
        headers = [pair for pair in ours.headers if pair[0] != "content-length"] + [chunked]
    else:
        return ours
    return replace(ours, headers=_sorted(headers))


def _sorted(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(headers, key=lambda pair: pair[0]))  # stable: same-name order kept


_UVICORN_LINE = r"Uvicorn running on http://([\d.]+):(\d+)"


def _answers(url: str) -> None:
    """Fail unless a TCP connection to ``url`` is accepted (it is bound and listening)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=WAIT):
        pass


def _stop(proc: CliProcess) -> tuple[int, str]:
    proc.signal(signal.SIGTERM)
    code = proc.wait()
    assert proc.proc.stdout is not None
    out = proc.proc.stdout.read()
    for stream in (proc.proc.stdout, proc.proc.stderr):
        if stream is not None:
            stream.close()
    return code, out


@contextlib.contextmanager
def serve_both(
    target: str, *, lifespan: str = "on", env: dict[str, str] | None = None
) -> Iterator[Servers]:
    """Serve ``target`` with the sidecar and with uvicorn; stop both with SIGTERM after.

    Both are started before either is waited for, so their imports overlap. On exit both
    must stop with code 0 (lifespan shutdown ran); their stdout is left in
    ``Servers.stdout`` for the caller to check what the app printed.
    """
    # The same hash seed in both: frameworks that build headers from sets (Quart's
    # `allow`) then list them in the same order.
    env = {"PYTHONHASHSEED": "0", **(env or {})}
    sidecar = CliProcess(
        ["run", target, *LOOPBACK, "--lifespan", lifespan, "--drain-delay", "0"], env=env
    )
    uvicorn = CliProcess(
        [target, "--host", "127.0.0.1", "--port", "0", "--lifespan", lifespan,
         "--http", "httptools", "--ws", "wsproto", "--no-access-log"],
        env=env,
        module="uvicorn",
    )  # fmt: skip
    servers = Servers(sidecar, uvicorn)
    try:
        sidecar.wait_serving()
        bound = uvicorn.wait_line(_UVICORN_LINE)
        uvicorn.app_url = f"http://{bound.group(1)}:{bound.group(2)}"
        _answers(uvicorn.app_url)
        yield servers
        code, servers.stdout["sidecar"] = _stop(sidecar)
        assert code == 0, f"the sidecar exited with {code}:\n{sidecar.log()}"
        if lifespan == "on":
            assert "lifespan shutdown complete" in sidecar.log()
        code, servers.stdout["uvicorn"] = _stop(uvicorn)
        # uvicorn re-raises SIGTERM after its shutdown, so it ends killed by the signal.
        assert code in (0, -signal.SIGTERM), f"uvicorn exited with {code}:\n{uvicorn.log()}"
    finally:
        for proc in (sidecar, uvicorn):
            proc.kill()
            for stream in (proc.proc.stdout, proc.proc.stderr):
                if stream is not None and not stream.closed:
                    stream.close()


def write_data_file(directory: Path, size: int = 100_000) -> bytes:
    """Write the file the apps serve (``FILE_NAME``), ``size`` bytes of CSV."""
    rows = b"".join(b"%d,item-%d,%d.%02d\n" % (i, i, i * 7, i % 100) for i in range(size // 8))
    data = (b"id,name,amount\n" + rows)[:size]
    assert len(data) == size
    (directory / FILE_NAME).write_bytes(data)
    return data
