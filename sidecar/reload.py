"""``sidecar run --reload``: restart the app when its files change (development only).

A parent process watches the files with watchfiles (what uvicorn's reloader uses) and
runs the sidecar in a child process, ``sidecar reload-child``; on a change it stops the
child with SIGTERM and starts a new one. A stop is the sidecar's normal one, so the
app's lifespan shutdown runs; the new child imports the app afresh and runs lifespan
startup. A process per run, rather than a re-import in place, is what makes the import
clean: a module deleted or renamed, a module-level registry, a C extension or a thread
the old code started cannot survive into the new code, and nothing the parent holds
goes stale. The admin port lives in the child, like the app port, so probes and metrics
describe the code that serves.

The child gets the parent's effective configuration (pickled, through a pipe that only
it inherits, so no secret reaches a file or the command line), with the drain delay set
to 0: no load balancer routes to a development server, so a restart or Ctrl-C does not
wait for one.

Signals: SIGTERM to the parent is passed on to the child; so is SIGINT, except the one a
terminal's Ctrl-C sends to the whole foreground process group, which the child has
received already. A second SIGINT is always passed on (a second Ctrl-C skips what is left
of the child's stop, as without reload). The parent exits with the child's exit code.

This module knows nothing of worker processes: one child serves at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .config import Config
from .errors import ConfigError

logger = logging.getLogger("sidecar.reload")


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class ChangeFilter:
    """Which changed paths restart the app: watchfiles' defaults, then the patterns.

    A path must match one of ``includes`` and none of ``excludes`` (glob patterns matched
    from the right, as ``pathlib`` does); an exclude that names a directory ignores
    everything below it.
    """

    def __init__(self, includes: Sequence[str], excludes: Sequence[str]) -> None:
        from watchfiles import DefaultFilter

        self._default = DefaultFilter()
        self.includes = tuple(includes)
        self.excluded_dirs = tuple(str(Path(e).resolve()) for e in excludes if Path(e).is_dir())
        self.excludes = tuple(e for e in excludes if not Path(e).is_dir())

    def __call__(self, change: Any, path: str) -> bool:
        if not self._default(change, path):
            return False
        if path.startswith(self.excluded_dirs):
            return False
        candidate = Path(path)
        if not any(candidate.match(pattern) for pattern in self.includes):
            return False
        return not any(candidate.match(pattern) for pattern in self.excludes)


def child_config(config: Config) -> Config:
    """The configuration a child serves with: reload off, no drain delay."""
    return dataclasses.replace(
        config,
        shutdown=dataclasses.replace(config.shutdown, drain_delay=0.0),
        reload=dataclasses.replace(config.reload, enabled=False),
    )


def read_child_config(fd: int) -> Config:
    """Read the configuration the parent wrote for a child to file descriptor ``fd``."""
    with os.fdopen(fd, "rb") as pipe:
        config = pickle.load(pipe)
    if not isinstance(config, Config):
        raise TypeError(f"expected a Config on fd {fd}, got {type(config).__name__}")
    return config


def _exit_code(returncode: int) -> int:
    # A child killed by a signal reports -signum; a shell would say 128 + signum.
    return 128 - returncode if returncode < 0 else returncode


def _terminal_sent_it_too() -> bool:
    """Whether a SIGINT now most likely came from Ctrl-C, which the child got as well.

    The terminal sends it to its foreground process group, which the child shares with
    this process.
    """
    try:
        stdin = sys.stdin.fileno() if sys.stdin is not None else -1
        return stdin >= 0 and os.isatty(stdin) and os.tcgetpgrp(stdin) == os.getpgrp()
    except (OSError, ValueError):
        return False


class Reloader:
    """The parent process of ``--reload``: watch, restart the child, pass signals on."""

    def __init__(self, config: Config, command: Sequence[str]) -> None:
        if config.server.workers > 1:
            raise ConfigError(
                [
                    f"reload.enabled cannot be combined with server.workers "
                    f"({config.server.workers}); expected server.workers 1"
                ]
            )
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            raise ConfigError(
                [
                    "reload.enabled (--reload) needs watchfiles, which is not installed: "
                    "pip install 'lifespan-sidecar[reload]' (or watchfiles)"
                ]
            ) from None
        self._config = config
        self._command = list(command)
        reload = config.reload
        self.dirs = [str(Path(d).resolve()) for d in _split(reload.dirs)] or [os.getcwd()]
        self.filter = ChangeFilter(_split(reload.includes), _split(reload.excludes))
        self._child: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._interrupts = 0
        # The child a stop signal has reached (passed on, or from the terminal).
        self._told: subprocess.Popen[bytes] | None = None
        self._restarting = False
        self.restarts = 0

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT, restarting on changes; return the exit code."""
        from watchfiles import watch

        if self._config.shutdown.drain_delay:
            logger.info(
                "reload: the drain delay (shutdown.drain_delay, %gs) is 0 under --reload: "
                "no load balancer routes to a development server",
                self._config.shutdown.drain_delay,
            )
        logger.info(
            "reload: watching %s for changes to %s (excluding %s); for development only",
            ", ".join(self.dirs),
            ", ".join(self.filter.includes) or "nothing",
            ", ".join((*self.filter.excludes, *self.filter.excluded_dirs)) or "nothing",
        )
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._start()
            for changes in watch(
                *self.dirs,
                watch_filter=self.filter,
                step=max(int(self._config.reload.delay * 1000), 1),
                stop_event=self._stop,
                raise_interrupt=False,
            ):
                if self._stop.is_set():
                    break
                paths = sorted({os.path.relpath(path) for _, path in changes})
                logger.info("reload: %s changed; restarting the app", ", ".join(paths))
                self._restart()
            return self._wait_child()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    # -- the child ------------------------------------------------------------------------

    def _start(self) -> None:
        read, write = os.pipe()
        # A listening socket the parent inherited (server.fd) is every child's app port.
        inherited = (self._config.server.fd,) if self._config.server.fd >= 0 else ()
        try:
            child = subprocess.Popen(
                [*self._command, "--config-fd", str(read)],
                pass_fds=(read, *inherited),
                close_fds=True,
            )
        finally:
            os.close(read)
        # The pickle is a few kilobytes, far below a pipe's buffer: the write does not
        # wait for the child to read.
        with os.fdopen(write, "wb") as pipe:
            pickle.dump(child_config(self._config), pipe)
        self._child = child
        threading.Thread(target=self._report_exit, args=(child,), daemon=True).start()

    def _report_exit(self, child: subprocess.Popen[bytes]) -> None:
        code = child.wait()
        # A clean exit is a stop someone asked for: Ctrl-C reaches the child a moment
        # before this process's handler runs, so it is no news.
        if code != 0 and child is self._child and not self._restarting and not self._stop.is_set():
            logger.warning(
                "reload: the app exited with code %d; it restarts on the next change",
                _exit_code(code),
            )

    def _restart(self) -> None:
        child = self._child
        self._restarting = True
        try:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
                child.wait()
            if not self._stop.is_set():
                self.restarts += 1
                self._start()
        finally:
            self._restarting = False

    def _wait_child(self) -> int:
        child = self._child
        if child is None:
            return 0
        if child is not self._told and child.poll() is None:
            # Started while the signal was being handled: it has not heard of the stop.
            child.send_signal(signal.SIGTERM)
        return _exit_code(child.wait())

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        child = self._child
        forward = True
        if signum == signal.SIGINT:
            self._interrupts += 1
            forward = self._interrupts > 1 or not _terminal_sent_it_too()
        if forward and child is not None and child.poll() is None:
            child.send_signal(signum)
        self._told = child
        self._stop.set()
