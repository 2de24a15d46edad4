"""A worker's side of the control channel: it reports, the supervisor decides.

The link runs on the worker's admin thread, like the probes: it keeps reporting while
the app's event loop is blocked, which is how the supervisor learns that it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .channel import Channel, Message, encode
from .report import worker_status

if TYPE_CHECKING:
    from ..runner import Sidecar

logger = logging.getLogger("sidecar.workers")

#: Seconds between two status messages.
STATUS_INTERVAL = 0.5


class WorkerLink:
    """Report this worker's status to the supervisor and carry out its commands.

    The sidecar ``attach``es itself before the link runs: from then on ``status`` is
    what to report, ``stop`` begins its shutdown (``True`` skips what is left of the
    waits) and ``dump`` logs the app thread's stack.
    """

    def __init__(self, sock: socket.socket, slot: int) -> None:
        self._sock = sock
        self.slot = slot
        self.status: Callable[[], Message] = dict
        self.stop: Callable[[bool], None] = lambda force: None
        self.dump: Callable[[], None] = lambda: None

    def attach(self, sidecar: Sidecar) -> None:
        """Report ``sidecar``'s status from now on and obey the supervisor on it."""
        self.status = lambda: worker_status(sidecar)
        self.stop = lambda force: sidecar.request_shutdown(force=force)
        self.dump = sidecar.loop_monitor.dump_now

    async def run(self) -> None:
        """Report every ``STATUS_INTERVAL`` until cancelled; obey what arrives."""
        channel = await Channel.open(self._sock.dup())
        obeying = asyncio.ensure_future(self._obey(channel))
        try:
            while not obeying.done():
                try:
                    await channel.send(self._status())
                except ConnectionError:
                    break
                await asyncio.wait((obeying,), timeout=STATUS_INTERVAL)
        finally:
            obeying.cancel()
            channel.close()

    async def _obey(self, channel: Channel) -> None:
        async for message in channel.messages():
            kind = message.get("type")
            if kind == "stop":
                self.stop(bool(message.get("force")))
            elif kind == "dump":
                self.dump()
        # The supervisor is gone: nobody routes traffic here or will reap this process.
        logger.warning("the supervisor closed the control channel; stopping now")
        self.stop(True)

    def _status(self) -> Message:
        try:
            status = self.status()
        except Exception:  # a report must never take the link down
            logger.exception("cannot build this worker's status")
            status = {}
        return {"type": "status", **status}

    def send_now(self, message: dict[str, Any]) -> None:
        """Send one message from any thread, blocking (the last words before exiting)."""
        with contextlib.suppress(OSError):
            self._sock.sendall(encode(message))

    def final_status(self) -> None:
        """Report once more, after the stop: the counters the supervisor keeps."""
        self.send_now(self._status())
