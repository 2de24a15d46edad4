"""Soak: a million requests of every kind through one sidecar, watching memory and descriptors.

Starts ``python -m sidecar run bench.soak_app:app`` (request metrics on, the default) on
free loopback ports, waits for ``/readyz`` 200 on the admin port, and drives a mix until
at least ``--requests`` requests have been completed and counted by the clients:

- ``wrk``, with a Lua script that sends ``GET /plain``, ``GET /json``, a 4 KiB
  ``POST /echo`` and ``GET /chunks`` (streamed, chunked) in turn on each connection and
  checks every response's status, type and body;
- at the same time, asyncio clients in this process: WebSocket echo messages (each
  message counts as a request; sessions close cleanly after ``--ws-session-messages``
  and reconnect), WebSocket clients that vanish without a close frame, clients that
  send half a request head, half a request body, or leave while ``/slow`` is streaming,
  and malformed requests (bad request line, bad header, a header line twice the size
  limit), which must get a 400 or 431 and a closed connection.

Every ``--sample-interval`` seconds it records the sidecar's RSS (``VmRSS`` of
``/proc/PID/status``), its open descriptors (``/proc/PID/fd``) and, from ``/metrics``,
``sidecar_connections_open``, ``sidecar_http_requests_in_flight`` and
``sidecar_websocket_connections``, and prints them as a table.

Warm-up: the samples taken before 10% of ``--requests`` were served (as ``/metrics``
counts requests, plus WebSocket messages) are warm-up. RSS growth is measured from the
first sample after warm-up to the sample taken as the load ends (right after the last
``wrk`` run, the asyncio clients still running); the load goes on until at least one
periodic sample falls after warm-up. Descriptors are counted at baseline (after startup,
before any load), at the end of the load, and after the settle: once the clients are
gone, ``/metrics`` is polled until no connection is open and no request in flight, then
the descriptor count until it is back at baseline, each with an upper bound.

Targets: RSS growth after warm-up under 5%, descriptors after the settle equal to the
baseline. Exit status: 0 when both are met and nothing failed, 1 when a request or
message failed unexpectedly (a non-200 or wrong body where a 200 was due, a reset or
timeout on a well-formed request, a malformed request not answered 400/431 and closed,
a warning or error in the sidecar's log, a status other than 200 or 499 in its request
metrics, the sidecar exiting non-zero), 3 when only a target was missed, 2 when the run
could not start.

The machine has two cores: the sidecar is pinned to CPU 0 and everything that makes
load (``wrk``, the asyncio clients, this script) to CPU 1, as in ``bench/compare.py``,
so the load generators never take CPU time from the server they measure.

    python bench/soak.py                      # 1,000,000 requests, a sample every 10 s
    python bench/soak.py --quick              # 20,000 requests, a sample every second

Results go to ``bench/results/`` (``--results`` to change) as JSON and Markdown. Needs
``wrk`` and ``taskset`` (``apt-get install -y wrk util-linux``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.client
import json
import math
import os
import platform
import re
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's bench package, also when run as a script

from bench import soak_app  # noqa: E402
from bench.compare import (  # noqa: E402
    CLIENT_CPU,
    SERVER_CPU,
    ensure_tools,
    free_port,
    wait_until_answering,
)

RESULTS = ROOT / "bench" / "results"
APP = "bench.soak_app:app"

WRK_KINDS = ("plain", "json", "post-4k", "stream")
CLIENT_KINDS = (
    "ws-message",
    "ws-drop",
    "abandon-head",
    "abandon-body",
    "abandon-response",
    "malformed-line",
    "malformed-header",
    "oversized-header",
)
KINDS = WRK_KINDS + CLIENT_KINDS
KIND_TITLES = {
    "plain": "`GET /plain`, 13 bytes of text (wrk)",
    "json": "`GET /json`, a small JSON object (wrk)",
    "post-4k": "`POST /echo`, 4 KiB body echoed (wrk)",
    "stream": f"`GET /chunks`, {soak_app.CHUNKS} chunks of {soak_app.CHUNK_SIZE // 1024} KiB (wrk)",
    "ws-message": "WebSocket echo message (text and bytes, sessions closed cleanly)",
    "ws-drop": "WebSocket session dropped after one message, no close frame",
    "abandon-head": "half a request head, then the client closes",
    "abandon-body": "`POST /echo` with 1 of 4 KiB sent, then the client closes",
    "abandon-response": "`GET /slow`, the client closes after the first chunk",
    "malformed-line": "bad request line: 400 and close expected",
    "malformed-header": "header name with a space: 400 and close expected",
    "oversized-header": "16 KiB header line (limit 8190): 400/431 and close expected",
}

WARMUP_SHARE = 0.10
RSS_TARGET_PCT = 5.0
OP_TIMEOUT = 10.0  # seconds for any one client operation; none takes more than ~1 s
SETTLE_TIMEOUT = 30.0  # upper bound for the connections to close after the load
FD_SETTLE_TIMEOUT = 10.0  # then for the descriptor count to come back to baseline
POST_BODY = b"0123456789abcdef" * 256  # 4 KiB
HOST = "127.0.0.1"

MALFORMED = {
    "malformed-line": b"GET /plain HTTP/1.1 junk\r\nHost: soak\r\n\r\n",
    "malformed-header": b"GET /plain HTTP/1.1\r\nHost: soak\r\nBad Header: x\r\n\r\n",
    "oversized-header": (
        b"GET /plain HTTP/1.1\r\nHost: soak\r\nX-Oversized: " + b"a" * 16384 + b"\r\n\r\n"
    ),
}
REFUSED = (400, 431)

# The wrk script: the four kinds in turn on each connection, every response checked and
# counted by kind. wrk does not say which request a response answers, so the kind is
# told by the response itself (each one has its own content type). Counters are globals
# of each thread's Lua state so that done() can collect them with thread:get().
WRK_SCRIPT = string.Template(
    r"""
local post_body = string.rep("0123456789abcdef", 256)
local stream_type = "$stream_type"
local stream_size = $stream_size
local names = {"plain", "json", "post-4k", "stream"}
local reqs
sent = {0, 0, 0, 0}
ok = {0, 0, 0, 0}
bad_status = 0
bad_body = 0
local i = 0

function init(args)
  -- built here, not at load time: wrk.format needs wrk.host for the Host header
  reqs = {
    wrk.format("GET", "/plain"),
    wrk.format("GET", "/json"),
    wrk.format("POST", "/echo", {["Content-Type"] = "application/octet-stream"}, post_body),
    wrk.format("GET", "/chunks"),
  }
end

function request()
  i = i % 4 + 1
  sent[i] = sent[i] + 1
  return reqs[i]
end

function response(status, headers, body)
  if status ~= 200 then
    bad_status = bad_status + 1
    return
  end
  local ctype = headers["content-type"]
  if ctype == "text/plain" and body == "Hello, world!" then
    ok[1] = ok[1] + 1
  elseif ctype == "application/json" and body == '{"message": "Hello, world!"}' then
    ok[2] = ok[2] + 1
  elseif ctype == "application/octet-stream" and body == post_body then
    ok[3] = ok[3] + 1
  elseif ctype == stream_type and headers["transfer-encoding"] == "chunked"
      and #body == stream_size then
    ok[4] = ok[4] + 1
  else
    bad_body = bad_body + 1
  end
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local e = summary.errors
  local s, o, bs, bb = {0, 0, 0, 0}, {0, 0, 0, 0}, 0, 0
  for _, t in ipairs(threads) do
    local ts, to = t:get("sent"), t:get("ok")
    for k = 1, 4 do
      s[k] = s[k] + ts[k]
      o[k] = o[k] + to[k]
    end
    bs = bs + t:get("bad_status")
    bb = bb + t:get("bad_body")
  end
  io.write(string.format(
    'SOAK {"requests": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, ' ..
    '"non_2xx": %d, "bad_status": %d, "bad_body": %d',
    summary.requests, e.connect, e.read, e.write, e.timeout, e.status, bs, bb))
  for k = 1, 4 do
    io.write(string.format(', "sent %s": %d, "ok %s": %d', names[k], s[k], names[k], o[k]))
  end
  io.write("}\n")
end
"""
).substitute(
    stream_type=soak_app.STREAM_TYPE.decode(),
    stream_size=soak_app.CHUNKS * soak_app.CHUNK_SIZE,
)


# -- what the clients saw -----------------------------------------------------------------


@dataclass
class Tally:
    """Completed requests by kind and unexpected failures by kind and reason."""

    completed: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    #: The first detail seen for each failure, to tell what happened.
    examples: dict[str, str] = field(default_factory=dict)
    #: WebSocket sessions that ended with a clean close (not counted as requests).
    ws_sessions: int = 0
    #: Requests wrk sent but had no response for when its round ended (it stops mid-way).
    wrk_unanswered: int = 0

    def ok(self, kind: str, count: int = 1) -> None:
        self.completed[kind] += count

    def fail(self, kind: str, reason: str, detail: str = "", count: int = 1) -> None:
        key = f"{kind}: {reason}"
        self.failures[key] += count
        self.examples.setdefault(key, detail[:300])

    @property
    def total(self) -> int:
        return sum(self.completed.values())


# -- the sidecar process ------------------------------------------------------------------


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def fd_names(self) -> list[str]:
        """What each open descriptor points at (``socket:[...]``, ``pipe:[...]``, paths)."""
        names = []
        directory = Path(f"/proc/{self.pid}/fd")
        for entry in directory.iterdir():
            try:
                names.append(os.readlink(entry))
            except FileNotFoundError:  # closed between listing and reading
                continue
        return names

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def metrics(self) -> dict[str, float]:
        conn = http.client.HTTPConnection(HOST, self.admin_port, timeout=OP_TIMEOUT)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read().decode()
            if response.status != 200:
                raise RuntimeError(f"/metrics answered {response.status}")
        finally:
            conn.close()
        return parse_metrics(body)


_SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_CODE_LABEL = re.compile(r'code="([^"]*)"')


def parse_metrics(text: str) -> dict[str, float]:
    """The gauges the soak follows, the request count, and the request count by status."""
    wanted = {
        "sidecar_connections_open": "connections_open",
        "sidecar_http_requests_in_flight": "in_flight",
        "sidecar_websocket_connections": "websockets",
    }
    values: dict[str, float] = {"requests": 0.0}
    for line in text.splitlines():
        match = _SAMPLE_LINE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        if name in wanted:
            values[wanted[name]] = float(value)
        elif name == "sidecar_http_requests_total":
            values["requests"] += float(value)
            code = _CODE_LABEL.search(labels or "")
            key = f"code {code.group(1) if code else '?'}"
            values[key] = values.get(key, 0.0) + float(value)
    return values


def start_sidecar(log: Path) -> Sidecar:
    port, admin_port = free_port(), free_port()
    # The defaults are what is measured: no SIDECAR_* settings from this environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = str(ROOT)
    command = [
        "taskset", "-c", SERVER_CPU, sys.executable, "-m", "sidecar", "run", APP,
        "--host", HOST, "--port", str(port), "--admin-host", HOST,
        "--admin-port", str(admin_port), "--drain-delay", "0",
        "--log-level", "warning", "--log-format", "json",
    ]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=sink)
    return Sidecar(proc, port, admin_port, log)


def stop_sidecar(sidecar: Sidecar) -> int:
    if sidecar.proc.poll() is None:
        sidecar.proc.send_signal(signal.SIGTERM)
    try:
        return sidecar.proc.wait(30)
    except subprocess.TimeoutExpired:
        sidecar.proc.kill()
        sidecar.proc.wait()
        return -int(signal.SIGKILL)


def log_problems(log: Path) -> list[str]:
    """The sidecar's log lines at warning level or above (the soak expects none)."""
    problems = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(line)  # not a log record: a traceback or a crash message
            continue
        if record.get("level") not in ("debug", "info"):
            problems.append(f"{record.get('level')}: {record.get('message')}")
    return problems


# -- wrk ----------------------------------------------------------------------------------


async def run_wrk(port: int, seconds: int, connections: int, script: Path, tally: Tally) -> None:
    """One wrk run of the HTTP kinds; adds what it counted to ``tally``."""
    command = [
        "taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
        "--timeout", f"{OP_TIMEOUT:g}s", "-s", str(script), f"http://{HOST}:{port}/",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    output = out.decode(errors="replace")
    line = next((x for x in output.splitlines() if x.startswith("SOAK ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{output}{err.decode()}")
    counts: dict[str, int] = json.loads(line.removeprefix("SOAK "))
    for kind in WRK_KINDS:
        tally.ok(kind, counts[f"ok {kind}"])
    answered = sum(counts[f"ok {kind}"] for kind in WRK_KINDS)
    answered += counts["bad_status"] + counts["bad_body"]
    tally.wrk_unanswered += sum(counts[f"sent {kind}"] for kind in WRK_KINDS) - answered
    if counts["bad_status"]:
        tally.fail("wrk", "status other than 200", output, counts["bad_status"])
    if counts["bad_body"]:
        tally.fail("wrk", "200 with an unexpected type or body", output, counts["bad_body"])
    for error in ("connect", "read", "write", "timeout"):
        if counts[error]:
            tally.fail("wrk", f"socket {error} errors", output, counts[error])


# -- the asyncio clients ------------------------------------------------------------------


class Clients:
    """The load wrk cannot make: WebSocket messages, clients that leave, malformed requests."""

    def __init__(self, port: int, tally: Tally, ws_session_messages: int) -> None:
        self.port = port
        self.tally = tally
        self.ws_session_messages = ws_session_messages
        self.stop = asyncio.Event()

    async def ws_worker(self, number: int) -> None:
        """Echo sessions back to back: text and bytes messages, each checked, clean closes."""
        url = f"http://{HOST}:{self.port}/ws"
        timeout = aiohttp.ClientWSTimeout(ws_receive=OP_TIMEOUT, ws_close=OP_TIMEOUT)
        async with aiohttp.ClientSession() as session:
            session_number = 0
            while not self.stop.is_set():
                session_number += 1
                try:
                    await self._ws_session(session, url, timeout, f"{number}.{session_number}")
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self.tally.fail("ws-message", type(exc).__name__, repr(exc))

    async def _ws_session(
        self,
        session: aiohttp.ClientSession,
        url: str,
        ws_timeout: aiohttp.ClientWSTimeout,
        label: str,
    ) -> None:
        tally = self.tally
        async with asyncio.timeout(OP_TIMEOUT):
            ws = await session.ws_connect(url, autoclose=False, timeout=ws_timeout)
        async with ws:
            for n in range(self.ws_session_messages):
                if self.stop.is_set():
                    break
                text = f"{label}.{n} " + "t" * 48
                data = text.encode() + b"\x00" * 1000  # 1 KiB-ish binary message
                if n % 2:
                    await ws.send_bytes(data)
                else:
                    await ws.send_str(text)
                reply = await ws.receive()
                want = (aiohttp.WSMsgType.BINARY, data) if n % 2 else (aiohttp.WSMsgType.TEXT, text)
                if (reply.type, reply.data) != want:
                    tally.fail("ws-message", f"unexpected {reply.type.name}", repr(reply)[:300])
                    return
                tally.ok("ws-message")
            await ws.close()
        if ws.close_code != 1000:
            tally.fail("ws-message", f"session closed with {ws.close_code}", label)
            return
        tally.ws_sessions += 1

    async def misc_worker(self, offset: int) -> None:
        """The other client kinds in turn, each on a new connection."""
        operations: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("ws-drop", self.ws_drop),
            ("abandon-head", self.abandon_head),
            ("abandon-body", self.abandon_body),
            ("abandon-response", self.abandon_response),
            *((kind, self._malformed(kind)) for kind in MALFORMED),
        ]
        index = offset
        while not self.stop.is_set():
            kind, operation = operations[index % len(operations)]
            index += 1
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    await operation()
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self.tally.fail(kind, type(exc).__name__, repr(exc))

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, self.port, limit=2**20)

    async def abandon_head(self) -> None:
        _, writer = await self._connect()
        writer.write(b"GET /plain HTTP/1.1\r\nHost: soak\r\nUser-Agent: so")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        self.tally.ok("abandon-head")

    async def abandon_body(self) -> None:
        _, writer = await self._connect()
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 4096\r\n\r\n" + POST_BODY[:1024]
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        self.tally.ok("abandon-body")

    async def abandon_response(self) -> None:
        reader, writer = await self._connect()
        try:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: soak\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200 "):
                self.tally.fail("abandon-response", "no 200", head[:200].decode(errors="replace"))
                return
            await reader.readuntil(b"tick\n")  # the first chunk: the response is under way
        finally:
            writer.close()
            await writer.wait_closed()
        self.tally.ok("abandon-response")

    async def ws_drop(self) -> None:
        reader, writer = await self._connect()
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        if not head.startswith(b"HTTP/1.1 101 ") or accept not in head:
            writer.transport.abort()
            self.tally.fail("ws-drop", "no 101", head[:200].decode(errors="replace"))
            return
        payload = b"dropping after this"
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)  # FIN, text, masked
        reply = await reader.readexactly(2 + len(payload))
        writer.transport.abort()  # gone without a close frame
        if reply != bytes([0x81, len(payload)]) + payload:
            self.tally.fail("ws-drop", "wrong echo", repr(reply))
            return
        self.tally.ok("ws-drop")

    def _malformed(self, kind: str) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            reader, writer = await self._connect()
            try:
                writer.write(MALFORMED[kind])
                await writer.drain()
                answer = await reader.read()  # to the end: the server must close
            finally:
                writer.close()
                await writer.wait_closed()
            status, complete = parse_answer(answer)
            if status not in REFUSED or not complete:
                self.tally.fail(kind, f"answered {status}", answer[:200].decode(errors="replace"))
                return
            self.tally.ok(kind)

        return send


def parse_answer(answer: bytes) -> tuple[int, bool]:
    """The status of one HTTP response and whether it is exactly one complete response."""
    head, _, body = answer.partition(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].split()
    status = int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return status, length is not None and len(body) == int(length.group(1))


# -- sampling -----------------------------------------------------------------------------


@dataclass
class SamplePoint:
    at_s: float
    progress: int  # requests /metrics counted plus WebSocket messages, at this time
    rss_mb: float
    fds: int
    connections_open: float
    in_flight: float
    websockets: float
    phase: str  # baseline, warm-up, load, end of load, settled


def take_sample(sidecar: Sidecar, began: float, tally: Tally, phase: str) -> SamplePoint:
    # Memory and descriptors before the scrape, so its connection is not counted.
    rss, fds = sidecar.rss_kb(), sidecar.fds()
    values = sidecar.metrics()
    return SamplePoint(
        at_s=time.perf_counter() - began,
        progress=int(values["requests"]) + tally.completed["ws-message"],
        rss_mb=rss / 1024,
        fds=fds,
        connections_open=values.get("connections_open", 0.0),
        in_flight=values.get("in_flight", 0.0),
        websockets=values.get("websockets", 0.0),
        phase=phase,
    )


TABLE_HEAD = (
    f"{'time':>7} {'requests':>10} {'RSS MB':>8} {'fds':>5} {'conns':>6} {'in flight':>9} "
    f"{'ws':>4}  phase"
)


def table_row(sample: SamplePoint) -> str:
    return (
        f"{sample.at_s:6.1f}s {sample.progress:>10,} {sample.rss_mb:8.1f} {sample.fds:>5} "
        f"{sample.connections_open:>6.0f} {sample.in_flight:>9.0f} {sample.websockets:>4.0f}  "
        f"{sample.phase}"
    )


class Sampler:
    def __init__(self, sidecar: Sidecar, tally: Tally, interval: float, warmup: int) -> None:
        self.sidecar = sidecar
        self.tally = tally
        self.interval = interval
        self.warmup = warmup
        self.samples: list[SamplePoint] = []
        self.began = time.perf_counter()

    @property
    def after_warmup(self) -> list[SamplePoint]:
        return [s for s in self.samples if s.phase in ("load", "end of load")]

    def record(self, phase: str) -> SamplePoint:
        sample = take_sample(self.sidecar, self.began, self.tally, phase)
        if phase == "load" and sample.progress < self.warmup:
            sample.phase = "warm-up"
        self.samples.append(sample)
        print(table_row(sample), flush=True)
        return sample

    async def run(self) -> None:
        next_at = time.perf_counter() + self.interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += self.interval
            if self.sidecar.proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited with {self.sidecar.proc.returncode}")
            self.record("load")


def fd_kinds(names: list[str]) -> dict[str, int]:
    """Descriptors by what they are: socket, pipe, anon_inode:[eventpoll], a file..."""
    kinds: Counter[str] = Counter()
    for name in names:
        kinds[re.sub(r":\[\d+\]$", "", name) if not name.startswith("/") else "file"] += 1
    return dict(sorted(kinds.items()))


def stable_fds(sidecar: Sidecar, timeout: float = 5.0) -> int:
    """The descriptor count once it stops changing (a probe's connection just closed)."""
    deadline = time.perf_counter() + timeout
    last, same = sidecar.fds(), 0
    while same < 10 and time.perf_counter() < deadline:
        time.sleep(0.01)
        now = sidecar.fds()
        same = same + 1 if now == last else 0
        last = now
    return last


# -- the run ------------------------------------------------------------------------------


@dataclass
class Report:
    args: dict[str, Any]
    machine: dict[str, Any]
    completed: dict[str, int] = field(default_factory=dict)
    total: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    failure_examples: dict[str, str] = field(default_factory=dict)
    ws_sessions: int = 0
    wrk_unanswered: int = 0
    wrk_rounds: int = 0
    server_codes: dict[str, int] = field(default_factory=dict)
    server_log_problems: list[str] = field(default_factory=list)
    server_exit_code: int | None = None
    samples: list[SamplePoint] = field(default_factory=list)
    fds_by_kind_baseline: dict[str, int] = field(default_factory=dict)
    fds_by_kind_settled: dict[str, int] = field(default_factory=dict)
    load_s: float = 0.0
    settle_s: float = 0.0
    duration_s: float = 0.0
    rss_reference_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth_pct: float = 0.0
    rss_slope_mb_per_million: float = 0.0
    fds_baseline: int = 0
    fds_end_of_load: int = 0
    fds_after_settle: int = 0
    rss_ok: bool = False
    fds_ok: bool = False
    completed_run: bool = False


def slope_per_million(samples: list[SamplePoint]) -> float:
    """Least-squares RSS growth in MB per million requests over ``samples``."""
    if len(samples) < 2:
        return 0.0
    xs = [s.progress / 1e6 for s in samples]
    ys = [s.rss_mb for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0


async def drive(
    args: argparse.Namespace, sidecar: Sidecar, report: Report, script: Path
) -> Sampler:
    tally = Tally()
    sampler = Sampler(sidecar, tally, args.sample_interval, int(args.requests * WARMUP_SHARE))
    clients = Clients(sidecar.port, tally, args.ws_session_messages)

    fds_baseline = stable_fds(sidecar)
    report.fds_by_kind_baseline = fd_kinds(sidecar.fd_names())
    print(TABLE_HEAD)
    baseline = sampler.record("baseline")
    baseline.fds = fds_baseline
    report.fds_baseline = fds_baseline

    loops = [asyncio.ensure_future(sampler.run())]
    loops += [asyncio.ensure_future(clients.ws_worker(n)) for n in range(args.ws_clients)]
    loops += [asyncio.ensure_future(clients.misc_worker(n * 3)) for n in range(args.misc_clients)]
    began = time.perf_counter()

    def finished() -> bool:
        every_kind = all(tally.completed[kind] > 0 for kind in KINDS)
        # One sample after warm-up, and the one at the end: a growth needs two points.
        return tally.total >= args.requests and every_kind and len(sampler.after_warmup) >= 1

    try:
        rate = 0.0
        while not finished():
            for task in loops:  # a sampler or client that crashed ends the run
                if task.done():
                    task.result()
            left = max(0, args.requests - tally.total)
            seconds = args.round_seconds
            if rate and left:
                seconds = min(seconds, max(1, math.ceil(left / rate)))
            elif not left:
                seconds = 1  # only waiting for samples or a kind
            before, round_began = tally.total, time.perf_counter()
            await run_wrk(sidecar.port, seconds, args.connections, script, tally)
            report.wrk_rounds += 1
            rate = (tally.total - before) / (time.perf_counter() - round_began)
        # Right after the last wrk run, the asyncio clients still going: the load's end.
        end = sampler.record("end of load")
    finally:
        clients.stop.set()
        done, pending = await asyncio.wait(loops[1:], timeout=OP_TIMEOUT * 2)
        loops[0].cancel()
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
    report.load_s = time.perf_counter() - began
    report.completed = {kind: tally.completed[kind] for kind in KINDS}
    report.total = tally.total
    report.failures = dict(tally.failures)
    report.failure_examples = tally.examples
    report.ws_sessions = tally.ws_sessions
    report.wrk_unanswered = tally.wrk_unanswered

    report.fds_end_of_load = end.fds
    settle_began = time.perf_counter()
    deadline = settle_began + SETTLE_TIMEOUT
    while time.perf_counter() < deadline:
        values = sidecar.metrics()
        if not values.get("connections_open") and not values.get("in_flight"):
            break
        await asyncio.sleep(0.05)
    fd_deadline = time.perf_counter() + FD_SETTLE_TIMEOUT
    while time.perf_counter() < fd_deadline:
        if sidecar.fds() <= fds_baseline:
            break
        await asyncio.sleep(0.05)
    report.settle_s = time.perf_counter() - settle_began
    fds_settled = sidecar.fds()
    report.fds_by_kind_settled = fd_kinds(sidecar.fd_names())
    settled = sampler.record("settled")
    settled.fds = fds_settled
    report.fds_after_settle = fds_settled
    report.server_codes = {
        key.removeprefix("code "): int(value)
        for key, value in sorted(sidecar.metrics().items())
        if key.startswith("code ")
    }
    return sampler


def judge(report: Report, samples: list[SamplePoint]) -> None:
    report.samples = samples
    after = [s for s in samples if s.phase in ("load", "end of load")]
    if after:
        report.rss_reference_mb = after[0].rss_mb
        report.rss_end_mb = after[-1].rss_mb
        report.rss_growth_pct = (after[-1].rss_mb / after[0].rss_mb - 1) * 100
        report.rss_slope_mb_per_million = slope_per_million(after)
    report.rss_ok = bool(after) and report.rss_growth_pct < RSS_TARGET_PCT
    report.fds_ok = report.fds_after_settle == report.fds_baseline
    for code, count in report.server_codes.items():
        if code not in ("200", "499"):
            key = f"sidecar metrics: status {code}"
            report.failures[key] = count
            report.failure_examples.setdefault(key, "counted in sidecar_http_requests_total")
    if report.server_log_problems:
        key = "sidecar log: warnings or errors"
        report.failures[key] = len(report.server_log_problems)
        report.failure_examples.setdefault(key, report.server_log_problems[0][:300])
    if report.server_exit_code not in (0, None):
        report.failures["sidecar exit status"] = 1
        report.failure_examples.setdefault(
            "sidecar exit status", f"exited with {report.server_exit_code} on SIGTERM"
        )


def verdicts(report: Report) -> list[str]:
    return [
        f"RSS growth after warm-up: {report.rss_growth_pct:.2f}% "
        f"(target < {RSS_TARGET_PCT:g}%): {'met' if report.rss_ok else 'MISSED'}",
        f"fds: baseline {report.fds_baseline}, after load {report.fds_after_settle} "
        f"(target: {report.fds_after_settle} == {report.fds_baseline}): "
        f"{'met' if report.fds_ok else 'MISSED'}",
    ]


def markdown(report: Report) -> str:
    machine = report.machine
    lines = [
        f"Soak of `{APP}`, {report.total:,} requests in {report.load_s:.0f} s "
        f"({report.wrk_rounds} wrk rounds), {machine['date']}.",
        "",
        "| kind | completed |",
        "|---|---|",
    ]
    lines += [f"| {KIND_TITLES[kind]} | {report.completed[kind]:,} |" for kind in KINDS]
    lines += [f"| **total** | **{report.total:,}** |", ""]
    lines += [
        "| time | requests | RSS MB | fds | connections | in flight | WebSockets | phase |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s.at_s:.0f} s | {s.progress:,} | {s.rss_mb:.1f} | {s.fds} | "
        f"{s.connections_open:.0f} | {s.in_flight:.0f} | {s.websockets:.0f} | {s.phase} |"
        for s in report.samples
    ]
    lines += [""] + [f"- {line}" for line in verdicts(report)]
    lines += [
        f"- RSS {report.rss_reference_mb:.1f} MB after warm-up, {report.rss_end_mb:.1f} MB at "
        f"the end of the load (least-squares slope {report.rss_slope_mb_per_million:+.2f} MB "
        f"per million requests); descriptors {report.fds_baseline} at baseline, "
        f"{report.fds_end_of_load} at the end of the load, {report.fds_after_settle} after a "
        f"settle of {report.settle_s:.2f} s",
        "- the sidecar counted by status: "
        + ", ".join(f"{code}: {count:,}" for code, count in report.server_codes.items()),
        f"- unexpected failures: {sum(report.failures.values())}"
        + "".join(f"; {key}: {count}" for key, count in report.failures.items()),
        "",
        f"{machine['cpus']} cores (sidecar on CPU {SERVER_CPU}; wrk, the asyncio clients and "
        f"the driver on CPU {CLIENT_CPU}), Python {machine['python']}, "
        f"`{' '.join(['python', 'bench/soak.py', *report.args['argv']])}`.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--requests", type=int, default=None, help="at least this many (default 1,000,000)")
    add("--sample-interval", type=float, default=None, help="seconds (default 10)")
    add("--round-seconds", type=int, default=None, help="longest wrk run (default 10)")
    add("--connections", type=int, default=32, help="wrk connections")
    add("--ws-clients", type=int, default=8, help="WebSocket echo clients at once")
    add("--ws-session-messages", type=int, default=500, help="messages per WebSocket session")
    add("--misc-clients", type=int, default=16, help="clients for the other kinds at once")
    add("--quick", action="store_true", help="20,000 requests, samples every second")
    add("--results", type=Path, default=RESULTS, help="directory for the JSON and Markdown")
    args = parser.parse_args(argv)
    quick = {"requests": 20_000, "sample_interval": 1.0, "round_seconds": 1}
    full = {"requests": 1_000_000, "sample_interval": 10.0, "round_seconds": 10}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.requests < 1 or args.sample_interval <= 0 or args.round_seconds < 1:
        parser.error("--requests, --sample-interval and --round-seconds must be positive")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not ensure_tools():
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two CPUs: one for the sidecar, one for the load", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {int(CLIENT_CPU)})  # keep this script off the sidecar's CPU
    started = time.perf_counter()
    report = Report(
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        machine={
            "date": time.strftime("%Y-%m-%d"),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
    )
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "soak.lua"
        script.write_text(WRK_SCRIPT)
        sidecar = start_sidecar(Path(scratch) / "sidecar.log")
        try:
            wait_until_answering(sidecar.admin_port, sidecar.proc, "/readyz")
            sampler = asyncio.run(drive(args, sidecar, report, script))
            report.completed_run = True
        finally:
            report.server_exit_code = stop_sidecar(sidecar)
            report.server_log_problems = log_problems(sidecar.log)
    report.duration_s = time.perf_counter() - started
    judge(report, sampler.samples)

    text = markdown(report)
    print()
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.results / f"soak-{stamp}.json").write_text(json.dumps(asdict(report), indent=2))
    (args.results / f"soak-{stamp}.md").write_text(text + "\n")
    print(f"\nresults written to {args.results}/soak-{stamp}.json and .md")
    print()
    for line in verdicts(report):
        print(line)
    if report.failures:
        print(f"unexpected failures: {sum(report.failures.values())}", file=sys.stderr)
        for key, count in report.failures.items():
            print(f"  {key}: {count} ({report.failure_examples.get(key, '')!r})", file=sys.stderr)
        return 1
    return 0 if report.rss_ok and report.fds_ok else 3


if __name__ == "__main__":
    sys.exit(main())
