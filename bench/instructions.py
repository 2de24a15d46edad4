"""CPU instructions per request, counted by valgrind: a measurement that does not drift.

Requests/s on a shared machine move by 30% between runs, too much to see a change of a
few percent. This counts the instructions the server executes per request instead,
in-process: each server's HTTP protocol object gets requests through
``data_received`` on a fake transport (no sockets, no kernel), on uvloop, and runs the
same ASGI app (``bench.apps:app``). Running ``n`` and ``n + delta`` requests and
subtracting removes startup; what is left is the per-request cost of parsing, the
bridge and the app, in user space. The kernel's share (socket reads and writes) is the
same for every server and is not counted.

    python bench/instructions.py                 # sidecar (metrics on/off) and uvicorn
    python bench/instructions.py --path /json
    python bench/instructions.py --path /echo    # POST of a 4 KiB body, echoed

Needs valgrind (``apt-get install -y valgrind``); each figure takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("sidecar", "sidecar-no-metrics", "uvicorn")


class FakeTransport(asyncio.Transport):
    """A transport that accepts writes and tells when a response starts."""

    def __init__(self) -> None:
        super().__init__()
        self.answered = asyncio.Event()
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data[:9]) == b"HTTP/1.1 ":
            self.answered.set()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0


def sidecar_protocol(metrics: bool) -> asyncio.Protocol:
    from bench.apps import app
    from sidecar.config import ServerConfig
    from sidecar.metrics import Metrics
    from sidecar.serving import AppServer
    from sidecar.types import ASGIApp

    recorder = Metrics(version="bench", phases=["ready"], process_collectors=False)
    server = AppServer(
        ServerConfig(keep_alive_timeout=5.0),
        cast(ASGIApp, app),
        {},
        metrics=recorder if metrics else None,
        websocket_close_code=1012,
    )
    return server.connection_factory()()


def uvicorn_protocol() -> asyncio.Protocol:
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from bench.apps import app

    config = Config(app, http="httptools", lifespan="off", access_log=False, log_level="error")
    config.load()
    return HttpToolsProtocol(config=config, server_state=ServerState(), app_state={})


async def drive(variant: str, requests: int, path: str) -> None:
    if variant == "uvicorn":
        protocol = uvicorn_protocol()
    else:
        protocol = sidecar_protocol(metrics=variant == "sidecar")
    transport = FakeTransport()
    protocol.connection_made(transport)
    if path == "/echo":  # the POST scenario: a 4 KiB body, echoed
        body = b"x" * 4096
        request = b"POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n" % len(body)
        request += body
    else:
        request = b"GET %s HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n\r\n" % path.encode()
    for _ in range(requests):
        protocol.data_received(request)
        await transport.answered.wait()  # the app runs in a task: let it answer
        transport.answered.clear()
        await asyncio.sleep(0)  # and finish


def count(variant: str, requests: int, path: str) -> int:
    """Instructions of one process that serves ``requests`` requests."""
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, __file__, "--serve", variant, str(requests), "--path", path,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{result.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", default="/plain", choices=["/plain", "/json", "/echo"])
    parser.add_argument("--requests", type=int, default=3000, help="requests counted")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--serve", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        sys.path.insert(0, str(ROOT))
        uvloop.run(drive(args.serve[0], int(args.serve[1]), args.path))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is required: apt-get install -y valgrind", file=sys.stderr)
        return 2
    base = 200  # requests run in both processes: startup and warm-up cancel out
    per_request = {}
    for variant in args.variants:
        low = count(variant, base, args.path)
        high = count(variant, base + args.requests, args.path)
        per_request[variant] = (high - low) / args.requests
        print(f"{variant:20} {per_request[variant]:9,.0f} instructions per request", flush=True)
    if "uvicorn" in per_request:
        for variant, value in per_request.items():
            if variant != "uvicorn":
                print(f"{variant:20} {value / per_request['uvicorn']:.2f}x uvicorn's instructions")
    if "sidecar" in per_request and "sidecar-no-metrics" in per_request:
        cost = per_request["sidecar"] / per_request["sidecar-no-metrics"] - 1
        print(f"request metrics cost {cost:+.1%} of the sidecar's instructions per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
