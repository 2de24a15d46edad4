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
import signal
import socket
import sys

from ..config import load_config
from ..errors import AppLoadError, BindError, ConfigError, LifespanError
from ..logs import configure_logging
from .channel import MAX_LINE
from .link import WorkerLink

logger = logging.getLogger("sidecar")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_STARTUP = 0, 1, 2, 3


def _first_message(sock: socket.socket) -> dict[str, object]:
    """Read the configuration message, before any thread or loop exists."""
    data = b""
    while b"\n" not in data and len(data) < MAX_LINE:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the supervisor closed the control channel")
        data += chunk
    line, _, rest = data.partition(b"\n")
    if rest:
        raise ConnectionError("the supervisor sent more than the configuration first")
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
