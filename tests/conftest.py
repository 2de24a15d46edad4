"""Fixtures that run real sidecars on loopback, in-process or as a CLI subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import json
import logging
import os
import pty
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from sidecar.config import load_config
from sidecar.runner import Sidecar
from sidecar.state import Phase, Transition
from sidecar.types import ASGIApp

# The uvicorn comparison helper asserts in its own module: show its diffs like a test's.
pytest.register_assert_rewrite("tests.parity")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WAIT = 30.0  # upper bound for anything a test waits on; a pass never waits this long


# -- tools the README's test command does not install -------------------------------------
#
# Some tests need programs from Debian that `apt-get install -y prometheus && pip install
# -e '.[test]'` does not bring (podman, debootstrap, tini, a browser). Where they are missing
# such a test is skipped with the reason, so the README's command passes on a fresh machine;
# under CI (the environment variable CI is set, as `.ci/run` does after installing them) a
# missing tool is a failure instead, so CI can never go green by skipping.


def require_binaries(*names: str) -> dict[str, str]:
    """Return the path of each program in ``names``; skip (under CI: fail) if one is missing."""
    found = {name: shutil.which(name) for name in names}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        reason = f"needs {', '.join(missing)} on PATH (Debian packages; .ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so this is not skipped: {reason}", pytrace=False)
        pytest.skip(reason)
    return {name: path for name, path in found.items() if path is not None}


# -- HTTP over loopback -----------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]] = field(default_factory=list)
    reason: str = ""

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    url: str,
    method: str = "GET",
    *,
    body: bytes | list[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = WAIT,
) -> Reply:
    """Make one HTTP request on a new connection and read the whole reply.

    A list ``body`` is sent with ``Transfer-Encoding: chunked``, one chunk per item.
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        chunked = isinstance(body, list)
        headers = {**(headers or {}), **({"Transfer-Encoding": "chunked"} if chunked else {})}
        conn.request(method, target or "/", body=body, headers=headers, encode_chunked=chunked)
        return read_reply(conn.getresponse())
    finally:
        conn.close()


def open_socket(url: str) -> socket.socket:
    """A plain TCP connection to the host and port of ``url``, for raw HTTP bytes."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=WAIT)


def fetch_quietly(url: str) -> None:
    """Make a request whose outcome the test does not care about (it may be cut)."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        fetch(url)


def read_reply(response: http.client.HTTPResponse) -> Reply:
    data = response.read()
    pairs = response.getheaders()
    headers = {k.lower(): v for k, v in pairs}
    return Reply(response.status, headers, data, pairs, response.reason)


# -- in-process sidecars ----------------------------------------------------------------


class PhaseLog:
    """Record lifecycle transitions and let a test wait for one."""

    def __init__(self) -> None:
        self.transitions: list[Transition] = []
        self._cond = threading.Condition()

    def __call__(self, change: Transition) -> None:
        with self._cond:
            self.transitions.append(change)
            self._cond.notify_all()

    def phases(self) -> list[Phase]:
        with self._cond:
            return [t.phase for t in self.transitions]

    def wait_for(self, *phases: Phase, timeout: float = WAIT) -> Transition:
        """Wait until one of ``phases`` is reached and return that transition."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(t.phase in phases for t in self.transitions), timeout
            )
            if not found:
                names = [p.value for p in phases]
                raise AssertionError(f"none of {names} reached; saw {self.phases()}")
            return next(t for t in self.transitions if t.phase in phases)


async def _never() -> None:
    await asyncio.Event().wait()


class Running:
    """A ``Sidecar`` serving on its own thread; stop it with ``stop()``."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.phases = PhaseLog()
        sidecar.lifecycle.subscribe(self.phases)
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self.sidecar.serve(shutdown_trigger=_never))
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()

    def sync(self) -> None:
        """Wait until the sidecar's loop has finished the step it is running now."""
        loop = self.sidecar._loop
        assert loop is not None
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(WAIT)

    def wait_admin(self) -> None:
        if not self.sidecar.admin.bound.wait(WAIT) or self.sidecar.admin.address is None:
            raise AssertionError(f"admin server did not bind: {self.error!r}")

    def wait_serving(self) -> None:
        self.wait_admin()
        settled = self.phases.wait_for(Phase.READY, Phase.FAILED, Phase.STOPPED)
        if settled.phase is not Phase.READY or not self.sidecar.serving.wait(WAIT):
            raise AssertionError(f"sidecar did not become ready: {self.error!r}")

    def wait_finished(self) -> BaseException | None:
        if not self.finished.wait(WAIT):
            raise AssertionError("sidecar did not stop")
        return self.error

    def stop(self, *, force: bool = False) -> BaseException | None:
        self.sidecar.request_shutdown(force=force)
        return self.wait_finished()

    def app(self, path: str = "/") -> str:
        server = self.sidecar.app_server
        assert server is not None
        assert server.address is not None
        host, port = server.address
        return f"http://{host}:{port}{path}"

    def admin(self, path: str = "/") -> str:
        assert self.sidecar.admin.address is not None
        host, port = self.sidecar.admin.address
        return f"http://{host}:{port}{path}"


def make_config(**overrides: Any) -> Any:
    base = {
        "server.host": "127.0.0.1",
        "server.port": 0,
        "admin.host": "127.0.0.1",
        "admin.port": 0,
        "shutdown.drain_delay": 0,
        "shutdown.graceful_timeout": 5,
        "lifespan.startup_timeout": 10,
        "lifespan.shutdown_timeout": 10,
    }
    base.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_config(env={}, overrides=base)


@pytest.fixture
def run_sidecar() -> Iterator[Any]:
    """Start in-process sidecars for an app; every one is stopped at teardown."""
    started: list[Running] = []

    def start(
        app: ASGIApp,
        *,
        wait: bool = True,
        clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> Running:
        sidecar = Sidecar(make_config(**overrides), app=app, process_collectors=False, clock=clock)
        running = Running(sidecar)
        started.append(running)
        if wait:
            running.wait_serving()
        else:
            running.wait_admin()
        return running

    yield start
    for running in started:
        if not running.finished.is_set():
            running.stop(force=True)


# -- log records as events --------------------------------------------------------------


class LogWatch(logging.Handler):
    """Collect the sidecar's log records and let a test wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def mark(self) -> int:
        """Return a position; ``wait_for(..., after=position)`` ignores earlier records."""
        with self._cond:
            return len(self.records)

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = WAIT) -> str:
        """Wait for a record whose message matches ``pattern``; return the message."""
        regex = re.compile(pattern)

        def find() -> str | None:
            for record in self.records[after:]:
                message = record.getMessage()
                if regex.search(message):
                    return message
            return None

        with self._cond:
            if not self._cond.wait_for(lambda: find() is not None, timeout):
                seen = "\n".join(r.getMessage() for r in self.records[after:])
                raise AssertionError(f"no log message matching {pattern!r}; saw:\n{seen}")
            message = find()
            assert message is not None
            return message

    def messages(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        with self._cond:
            return [r.getMessage() for r in self.records if regex.search(r.getMessage())]


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    """Record every log message of the ``sidecar`` loggers, debug included."""
    watch = LogWatch()
    logger = logging.getLogger("sidecar")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(level)


# -- CLI subprocesses -------------------------------------------------------------------


def _take_the_terminal() -> None:
    """In the child, before exec: make the pty on stdin the session's controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


_ADMIN_LINE = re.compile(r"admin endpoints on http://([^:]+):(\d+)")
_APP_LINE = re.compile(r"serving the app on http://([^:]+):(\d+)")


class CliProcess:
    """``python -m sidecar ...`` in a subprocess, with its stderr lines in a queue.

    ``module`` runs another module the same way (the uvicorn comparison uses it).
    """

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path = TESTS,
        module: str = "sidecar",
        stdin: int = subprocess.DEVNULL,
        pass_fds: tuple[int, ...] = (),
        terminal: bool = False,
    ):
        self.terminal: int | None = None
        session: dict[str, Any] = {}
        if terminal:
            # A new session whose controlling terminal is a pty of ours: what a shell
            # gives a command, so Ctrl-C (``press_ctrl_c``) reaches its process group.
            self.terminal, secondary = pty.openpty()
            stdin = secondary
            session = {"start_new_session": True, "preexec_fn": _take_the_terminal}
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
        full_env.update(env or {})
        # stdin is not the terminal pytest may run in unless a test asks for one: a
        # sidecar on a terminal stops sooner on SIGINT.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=full_env,
            text=True,
            pass_fds=pass_fds,
            **session,
        )
        if terminal:
            os.close(stdin)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.admin_url = ""
        self.app_url = ""

    def _read(self) -> None:
        assert self.proc.stderr is not None
        try:
            for line in self.proc.stderr:
                self._queue.put(line.rstrip("\n"))
        except ValueError:  # closed at teardown while the process still ran (killed)
            pass
        self._queue.put(None)

    def wait_line(self, pattern: str, timeout: float = WAIT, *, count: int = 1) -> re.Match[str]:
        """Read stderr until ``count`` lines match ``pattern``; fail if the process ends first.

        Returns the match in the last of them.
        """
        regex = re.compile(pattern)
        for line in self.lines:
            match = regex.search(line)
            if match:
                count -= 1
                if count == 0:
                    return match
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; got:\n" + self.log()) from None
            if line is None:
                raise AssertionError(
                    f"process ended before a line matched {pattern!r}; got:\n" + self.log()
                )
            self.lines.append(line)
            match = regex.search(line)
            if match:
                count -= 1
                if count == 0:
                    return match

    def wait_serving(self) -> None:
        admin = self.wait_line(_ADMIN_LINE.pattern)
        self.admin_url = f"http://{admin.group(1)}:{admin.group(2)}"
        app = self.wait_line(_APP_LINE.pattern)
        self.app_url = f"http://{app.group(1)}:{app.group(2)}"
        self.wait_line("phase starting -> ready")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def press_ctrl_c(self) -> None:
        """Type Ctrl-C on the process's terminal (``terminal=True``)."""
        assert self.terminal is not None, "started without a terminal"
        os.write(self.terminal, b"\x03")

    def wait(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def log(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.terminal is not None:
            os.close(self.terminal)
            self.terminal = None


@pytest.fixture
def cli() -> Iterator[Any]:
    """Start ``python -m sidecar`` (or ``module=``) subprocesses; killed at teardown if up."""
    procs: list[CliProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        module: str = "sidecar",
        cwd: Path = TESTS,
        stdin: int = subprocess.DEVNULL,
        pass_fds: tuple[int, ...] = (),
        terminal: bool = False,
    ) -> CliProcess:
        proc = CliProcess(
            list(args),
            env=env,
            module=module,
            cwd=cwd,
            stdin=stdin,
            pass_fds=pass_fds,
            terminal=terminal,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        for stream in (proc.proc.stdout, proc.proc.stderr):
            if stream is not None:
                stream.close()


LOOPBACK = ["--host", "127.0.0.1", "--port", "0", "--admin-host", "127.0.0.1", "--admin-port", "0"]
