"""``sidecar run --reload``: a real file change restarts the app through its lifespan."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import load_config
from sidecar.reload import ChangeFilter, child_config

from .conftest import LOOPBACK, ROOT, fetch

APP = """
GREETING = {greeting!r}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        print("lifespan startup", GREETING, flush=True)
        await send({{"type": "lifespan.startup.complete"}})
        await receive()
        print("lifespan shutdown", GREETING, flush=True)
        await send({{"type": "lifespan.shutdown.complete"}})
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": GREETING.encode()}})
"""


def write_app(directory: Path, greeting: str) -> None:
    (directory / "reloading_app.py").write_text(textwrap.dedent(APP.format(greeting=greeting)))


def start(cli: Any, directory: Path, *extra: str) -> Any:
    return cli(
        "run", "reloading_app:app", "--reload", *LOOPBACK, "--drain-delay", "5",
        "--app-dir", str(directory), "--reload-dir", str(directory), "--reload-delay", "0.05",
        *extra, cwd=directory,
    )  # fmt: skip


def test_a_change_runs_lifespan_shutdown_then_a_fresh_import_and_startup(
    cli: Any, tmp_path: Path
) -> None:
    write_app(tmp_path, "first")
    proc = start(cli, tmp_path)
    proc.wait_line("reload: watching")
    proc.wait_serving()
    assert fetch(proc.app_url + "/").text == "first"
    # Admin port and app port live in the child, which logged them.
    assert fetch(proc.admin_url + "/readyz").status == 200

    write_app(tmp_path, "second")
    proc.wait_line(r"reload: reloading_app\.py changed; restarting the app")
    proc.wait_line("lifespan shutdown complete")
    proc.wait_line(r"phase stopping -> stopped")
    proc.wait_line("phase starting -> ready", count=2)
    app = proc.wait_line(r"serving the app on http://([^:]+):(\d+)", count=2)
    assert fetch(f"http://{app.group(1)}:{app.group(2)}/").text == "second"

    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert proc.proc.stdout is not None
    printed = proc.proc.stdout.read().splitlines()
    assert printed == [
        "lifespan startup first",
        "lifespan shutdown first",
        "lifespan startup second",
        "lifespan shutdown second",
    ]
    log = proc.log()
    # Restarts do not wait for a load balancer.
    assert "the drain delay (shutdown.drain_delay, 5s) is 0 under --reload" in log
    assert "draining: serving for" not in log


def test_a_file_that_does_not_match_the_patterns_changes_nothing(cli: Any, tmp_path: Path) -> None:
    write_app(tmp_path, "only")
    proc = start(cli, tmp_path, "--reload-exclude", "ignored_*.py")
    proc.wait_serving()
    (tmp_path / "notes.txt").write_text("not python")
    (tmp_path / "ignored_module.py").write_text("X = 1\n")
    (tmp_path / "trigger.py").write_text("Y = 2\n")  # the one that counts
    proc.wait_line(r"reload: trigger\.py changed; restarting the app")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "notes.txt" not in proc.log()
    assert "ignored_module.py" not in proc.log()


def test_an_app_that_fails_to_import_is_restarted_by_the_fix(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "reloading_app.py").write_text("raise RuntimeError('half-written')\n")
    proc = start(cli, tmp_path)
    proc.wait_line("importing module 'reloading_app' raised RuntimeError")
    proc.wait_line("reload: the app exited with code 3; it restarts on the next change")
    write_app(tmp_path, "fixed")
    proc.wait_serving()
    assert fetch(proc.app_url + "/").text == "fixed"
    proc.signal(signal.SIGINT)  # not from a terminal: passed on
    assert proc.wait() == 0


def test_the_exit_code_of_the_child_is_the_exit_code(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "reloading_app.py").write_text(
        "async def app(scope, receive, send):\n"
        "    await receive()\n"
        "    await send({'type': 'lifespan.startup.failed', 'message': 'no database'})\n"
    )
    proc = start(cli, tmp_path, "--lifespan", "on")
    proc.wait_line("reload: the app exited with code 3")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 3


def test_reload_is_refused_without_watchfiles(tmp_path: Path) -> None:
    write_app(tmp_path, "x")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "watchfiles.py").write_text("raise ImportError('not installed')\n")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "reloading_app:app", "--reload", *LOOPBACK],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])},
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "needs watchfiles, which is not installed: pip install 'lifespan-sidecar[reload]'" in (
        result.stderr
    )


def test_the_child_serves_without_reload_and_without_a_drain_delay() -> None:
    config = load_config(env={}, overrides={"reload.enabled": True})
    child = child_config(config)
    assert (child.reload.enabled, child.shutdown.drain_delay) == (False, 0.0)
    assert child.server == config.server


@pytest.mark.parametrize(
    ("path", "restarts"),
    [
        ("/src/app/main.py", True),
        ("/src/app/templates/page.html", False),
        ("/src/app/.hidden.py", False),
        ("/src/app/__pycache__/main.cpython-311.pyc", False),
        ("/src/app/main.py~", False),
        ("/src/app/tests/test_main.py", False),
    ],
)
def test_change_filter(path: str, restarts: bool) -> None:
    changes = ChangeFilter(["*.py"], [".*", ".py[cod]", ".sw.*", "~*", "tests/*"])
    assert changes(None, path) is restarts


def test_every_child_serves_the_socket_the_parent_inherited(cli: Any, tmp_path: Path) -> None:
    write_app(tmp_path, "first")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port, fd = listener.getsockname()[1], listener.fileno()
        proc = cli(
            "run", "reloading_app:app", "--reload", *LOOPBACK, "--fd", str(fd),
            "--app-dir", str(tmp_path), "--reload-dir", str(tmp_path), "--reload-delay", "0.05",
            cwd=tmp_path, pass_fds=(fd,),
        )  # fmt: skip
        proc.wait_line(rf"serving the app on http://127.0.0.1:{port} \(fd {fd}\)")
        proc.wait_line("phase starting -> ready")
        assert fetch(f"http://127.0.0.1:{port}/").text == "first"
        write_app(tmp_path, "second")
        proc.wait_line(rf"serving the app on http://127.0.0.1:{port} \(fd {fd}\)", count=2)
        proc.wait_line("phase starting -> ready", count=2)
        assert fetch(f"http://127.0.0.1:{port}/").text == "second"
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0


SLOW_SHUTDOWN = """
import asyncio


async def app(scope, receive, send):
    await receive()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await asyncio.sleep(1)  # still stopping when the parent hears of the Ctrl-C
    await send({"type": "lifespan.shutdown.complete"})
"""


def test_ctrl_c_stops_the_child_once(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "reloading_app.py").write_text(SLOW_SHUTDOWN)
    proc = cli(
        "run", "reloading_app:app", "--reload", *LOOPBACK, "--app-dir", str(tmp_path),
        "--reload-dir", str(tmp_path), cwd=tmp_path, terminal=True,
    )  # fmt: skip
    proc.wait_serving()
    # The terminal sends SIGINT to the whole foreground group, the child included; the
    # parent does not send it a second one (which would cut the stop short).
    proc.press_ctrl_c()
    assert proc.wait() == 0
    log = proc.log()
    assert "lifespan shutdown complete" in log
    assert "second shutdown request" not in log
    assert "the app exited" not in log
