"""Who may drain the pod: the admin token holds for every caller, loopback included.

The decision table runs on ``AdminGuard`` alone; the rest runs a real sidecar and calls
it over real sockets, from 127.0.0.1 and from 127.0.0.6 (where Istio's Envoy connects
from inside the pod).
"""

from __future__ import annotations

import http.client
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.auth import AdminGuard, load_token
from sidecar.config import REDACTED, load_config
from sidecar.errors import ConfigError

from .conftest import LOOPBACK, ROOT, TESTS, CliProcess, Reply, make_config, read_reply

TOKEN = secrets.token_hex(16)
PLACEHOLDER = "REPLACE-ME-with-a-random-token"  # what manifests/secret.yaml ships


@pytest.mark.parametrize(
    ("token", "allow", "loopback", "peer", "authorization", "status"),
    [
        ("", "", False, "203.0.113.9", None, None),  # nothing configured: open
        ("tok", "", False, "203.0.113.9", None, 401),
        ("tok", "", False, "203.0.113.9", "Bearer nope", 401),
        ("tok", "", False, "203.0.113.9", "Basic tok", 401),
        ("tok", "", False, "203.0.113.9", "Bearer tok", None),
        ("tok", "", False, "203.0.113.9", "bearer  tok ", None),
        ("tok", "", False, "127.0.0.1", None, 401),  # loopback needs the token too
        ("tok", "", False, "127.0.0.6", None, 401),  # Istio's Envoy
        ("tok", "", False, "::1", None, 401),
        ("tok", "", False, "127.0.0.1", "Bearer tok", None),
        ("tok", "", True, "127.0.0.6", None, None),  # trust_loopback: opted in
        ("tok", "", True, "::ffff:127.0.0.1", None, None),  # loopback on a dual-stack socket
        ("tok", "", True, "::ffff:203.0.113.9", None, 401),
        ("", "10.0.0.0/8", False, "10.1.2.3", None, None),
        ("", "10.0.0.0/8", False, "203.0.113.9", None, 403),
        ("", "10.0.0.0/8", False, "127.0.0.1", None, 403),  # loopback is not implied
        ("", "10.0.0.0/8", True, "127.0.0.1", None, None),
        ("tok", "10.0.0.0/8", False, "10.1.2.3", None, 401),  # both rules apply
        ("tok", "10.0.0.0/8", False, "203.0.113.9", "Bearer tok", 403),
        ("tok", "10.0.0.0/8", False, "10.1.2.3", "Bearer tok", None),
        ("tok", "", False, None, "Bearer tok", None),
        ("tok", "", False, None, None, 401),
    ],
)
def test_admin_guard(
    token: str,
    allow: str,
    loopback: bool,
    peer: str | None,
    authorization: str | None,
    status: int | None,
) -> None:
    denial = AdminGuard(token, allow, trust_loopback=loopback).check(peer, authorization)
    assert (denial.status if denial else None) == status


def test_the_token_file_is_read_and_checked(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    assert load_token(make_config(admin__token_file=str(token_file)).admin) == TOKEN
    with pytest.raises(ConfigError, match=r"admin\.token_file: no such file"):
        make_config(admin__token_file=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"admin\.token and admin\.token_file are both set"):
        make_config(admin__token=TOKEN, admin__token_file=str(token_file))
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match=r"is empty; generate one with `openssl rand -hex 32`"):
        make_config(admin__token_file=str(token_file))


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (PLACEHOLDER, "is a placeholder from an example (anyone who read it knows it)"),
        (
            "changeme-changeme-changeme",
            "is a placeholder from an example (anyone who read it knows it)",
        ),
        ("abc", "is too short to be a secret (3 bytes; expected at least 16)"),
        ("0123456789abcde", "is too short to be a secret (15 bytes; expected at least 16)"),
    ],
)
def test_weak_tokens_are_configuration_errors_that_never_show_the_token(
    token: str, problem: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"SIDECAR_ADMIN_TOKEN": token})
    assert info.value.problems == [
        f"admin.token {problem}; generate one with `openssl rand -hex 32`"
    ]
    token_file = tmp_path / "token"
    token_file.write_text(token)
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"admin.token_file": str(token_file)})
    assert problem in str(info.value)
    assert token not in str(info.value)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        cwd=TESTS,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env},
        check=False,
    )


@pytest.mark.parametrize("token", [PLACEHOLDER, "abc"])
def test_run_and_check_config_exit_2_on_a_weak_token(token: str) -> None:
    for command in (("run", "cli_apps:slow_startup", *LOOPBACK), ("check-config",)):
        result = _cli(*command, env={"SIDECAR_ADMIN_TOKEN": token})
        assert result.returncode == 2, result.stderr
        assert "generate one with `openssl rand -hex 32`" in result.stderr
        assert token not in result.stderr + result.stdout


def test_check_config_never_prints_the_token(tmp_path: Path) -> None:
    result = _cli("check-config", env={"SIDECAR_ADMIN_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout
    assert f"token: {REDACTED}" in result.stdout
    # Nor does a bad value of it in a file.
    config = tmp_path / "sidecar.yaml"
    config.write_text("admin:\n  token: [1, 2]\n")
    result = _cli("check-config", "--config", str(config), env={})
    assert result.returncode == 2
    assert f"invalid value {REDACTED} for admin.token" in result.stderr
    assert "[1, 2]" not in result.stderr


# -- a real sidecar, real sockets -----------------------------------------------------------


def _call(url: str, path: str, *, source: str, token: str | None = None) -> Reply:
    """One request from a socket bound to the loopback address ``source``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("POST" if path == "/prestop" else "GET", path, headers=headers)
        return read_reply(connection.getresponse())
    finally:
        connection.close()


@pytest.fixture
def guarded(cli: Any) -> CliProcess:
    proc: CliProcess = cli(
        "run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "0",
        env={"SIDECAR_ADMIN_TOKEN": TOKEN},
    )  # fmt: skip
    proc.wait_serving()
    return proc


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.6"])
def test_a_caller_on_loopback_without_the_token_cannot_drain(
    guarded: CliProcess, source: str
) -> None:
    refused = _call(guarded.admin_url, "/prestop", source=source)
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="sidecar-admin"'
    assert _call(guarded.admin_url, "/readyz", source=source).status == 200  # still ready
    assert _call(guarded.admin_url, "/prestop", source=source, token="wrong" * 4).status == 401
    assert _call(guarded.admin_url, "/readyz", source=source).status == 200
    assert _call(guarded.admin_url, "/prestop", source=source, token=TOKEN).status == 200
    assert _call(guarded.admin_url, "/readyz", source=source).status == 503
    guarded.wait_line(f"refused /prestop from {source}: a valid 'Authorization: Bearer")
    assert TOKEN not in guarded.log()


def test_trust_loopback_lets_loopback_drain_without_the_token(cli: Any) -> None:
    proc: CliProcess = cli(
        "run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "0",
        env={"SIDECAR_ADMIN_TOKEN": TOKEN, "SIDECAR_ADMIN_TRUST_LOOPBACK": "true"},
    )  # fmt: skip
    proc.wait_serving()
    assert _call(proc.admin_url, "/prestop", source="127.0.0.6").status == 200
    assert _call(proc.admin_url, "/readyz", source="127.0.0.1").status == 503


@pytest.mark.parametrize("via", ["environment", "token_file"])
def test_sidecar_prestop_reads_the_token_like_sidecar_run(
    guarded: CliProcess, via: str, tmp_path: Path
) -> None:
    port = guarded.admin_url.rsplit(":", 1)[1]
    env = {"SIDECAR_ADMIN_TOKEN": TOKEN}
    if via == "token_file":
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        env = {"SIDECAR_ADMIN_TOKEN_FILE": str(token_file)}
    # Without the token, the hook itself is refused (and says why).
    refused = _cli("prestop", "--admin-port", port, env={})
    assert refused.returncode == 1
    assert "refused the drain (401)" in refused.stderr
    assert "no admin token is set here" in refused.stderr
    assert _call(guarded.admin_url, "/readyz", source="127.0.0.1").status == 200
    result = _cli("prestop", "--admin-port", port, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "drained"
    assert _call(guarded.admin_url, "/readyz", source="127.0.0.1").status == 503


def test_no_answer_names_python_or_aiohttp(guarded: CliProcess) -> None:
    for path in ("/readyz", "/metrics", "/nowhere", "/prestop"):
        reply = _call(guarded.admin_url, path, source="127.0.0.1")
        assert "server" not in reply.headers, (path, reply.headers)
    app = _call(guarded.app_url, "/", source="127.0.0.1")
    assert "server" not in app.headers
