"""What the process at the top (a single sidecar or a supervisor) asks of the OS.

Leaf helpers shared by ``runner`` and ``workers.supervisor``: whether a person at a
terminal started the process, and how a third signal ends it.
"""

from __future__ import annotations

import logging
import os
import sys


def stdin_is_a_terminal() -> bool:
    """Whether a person at a terminal started this process (SIGINT is their Ctrl-C)."""
    stdin = sys.stdin
    try:
        return stdin is not None and stdin.isatty()
    except ValueError:  # closed
        return False


def exit_now(code: int) -> None:
    """End the process at once: flush the log, skip every cleanup (a third signal)."""
    logging.shutdown()
    os._exit(code)
