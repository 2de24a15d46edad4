"""A worker: one full serving loop of the app, behind the supervisor.

    python -m sidecar.workers.child FD

``FD`` is the worker's end of the control channel; the first message on it is the
configuration (the supervisor's, with the app port set to the inherited listening
socket, no drain delay of its own, no state directory and no linger: those are the
supervisor's). Everything else is today's single-process sidecar: app import, lifespan
startup and shutdown, its own event loop, heartbeat and checks; only the admin port
is not bound, the supervisor serves it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time

from ..config import load_config
from ..errors import AppLoadError, BindError, ConfigError, LifespanError
from ..logs import configure_logging
from .channel import MAX_LINE
from .link import WorkerLink

logger = logging.getLogger("sidecar")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_STARTUP = 0, 1, 2, 3
# Niceness of a worker relative to its supervisor (what `nice -n 5` would give).
WORKER_NICENESS = 5


def _first_message(sock: socket.socket) -> dict[str, object]:
    """Read the configuration message, before any thread or loop exists.

    Only that line is taken off the socket (peeked first): a command the supervisor
    sent right after it (a stop) is left for the link to read.
    """
    while True:
        data = sock.recv(MAX_LINE, socket.MSG_PEEK)
        if not data:
            raise ConnectionError("the supervisor closed the control channel")
        end = data.find(b"\n")
        if end >= 0:
            break
        if len(data) >= MAX_LINE:
            raise ConnectionError("the configuration message is too long")
        # Not all of it has arrived (a message larger than the socket's buffer).
        time.sleep(0.005)
    line = b""
    while len(line) < end + 1:
        line += sock.recv(end + 1 - len(line))
    message = json.loads(line)
    if not isinstance(message, dict) or message.get("type") != "config":
        raise ConnectionError("the first message is not the configuration")
    return message


def main(argv: list[str]) -> int:
    """Run one worker; return its exit code (3 when the app failed to start)."""
    from ..runner import run  # after the arguments: a broken call fails fast

    sock = socket.socket(fileno=int(argv[1]))
    message = _first_message(sock)
    slot = int(str(message["slot"]))
    try:
        config = load_config(document=message["config"])  # type: ignore[arg-type]
    except ConfigError as exc:
        print(f"sidecar worker {slot}: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.logging, worker=slot)
    # The supervisor answers the kubelet's probes for every worker: when the workers keep
    # the cores busy, a slightly lower priority lets it answer within milliseconds.
    os.nice(WORKER_NICENESS)
    # Ctrl-C in a terminal reaches the whole process group: the supervisor counts it
    # once and tells each worker what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    link = WorkerLink(sock, slot)
    try:
        run(config, link=link)
    except AppLoadError as exc:
        link.send_now({"type": "startup", "ok": False, "reason": "import", "message": str(exc)})
        logger.critical(str(exc), extra={"event": "exit", "exit_code": 3, "traceback": exc.trace})
        return EXIT_STARTUP
    except LifespanError as exc:
        summary = str(exc).splitlines()[0]
        link.send_now({"type": "startup", "ok": False, "reason": exc.reason, "message": summary})
        logger.critical(
            "the app failed to start (%s): %s",
            exc.reason,
            summary,
            extra={"event": "exit", "exit_code": 3},
        )
        return EXIT_STARTUP
    except (BindError, ConfigError) as exc:
        logger.critical(str(exc), extra={"event": "exit", "exit_code": 1})
        return EXIT_ERROR
    finally:
        link.final_status()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv))
