"""An ASGI app that leaves an orphan behind, mounted into the image by test_image.py.

``GET /orphan`` runs ``sh``, which starts ``sleep`` in the background and exits at once: the
sleep's parent is gone, so the kernel hands it to PID 1, and when it ends only PID 1 can
reap it. The body is the orphan's PID. Nothing else here may wait for children.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from pathlib import Path
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/orphan":
        # sh exits as soon as sleep is started; the event loop reaps sh, never the sleep. No
        # pipes: the sleep would hold their ends open. The PID comes back through a file.
        pid_file = Path(tempfile.mkdtemp()) / "orphan.pid"
        shell = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            f"sleep 600 & echo $! > {pid_file}",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.wait_for(shell.wait(), timeout=10)
        status, body = 200, pid_file.read_bytes().strip()
    else:
        status, body = 404, b"not found"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
