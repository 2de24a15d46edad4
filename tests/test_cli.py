"""The real CLI in subprocesses: signals, exit codes, logs; option mapping with CliRunner."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from sidecar import __version__
from sidecar.cli import FLAG_SPECS, REFUSED_FLAGS, main

from .conftest import LOOPBACK, ROOT, fetch


def test_sigterm_drains_then_stops_cleanly(cli: Any) -> None:
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "1")
    proc.wait_serving()
    assert fetch(proc.app_url + "/").status == 200
    proc.signal(signal.SIGTERM)
    proc.wait_line("phase ready -> draining")
    # during the drain: not ready, still serving
    assert fetch(proc.admin_url + "/readyz").status == 503
    assert fetch(proc.app_url + "/").status == 200
    assert proc.wait() == 0
    log = proc.log()
    assert "phase draining -> stopping after 1." in log
    assert "lifespan shutdown complete" in log
    assert "phase stopping -> stopped" in log


def test_sigint_during_startup_cancels_it_promptly(cli: Any) -> None:
    proc = cli("run", "cli_apps:hangs_in_startup", *LOOPBACK)
    proc.wait_line("admin endpoints on")
    proc.wait_line("startup began")
    began = time.monotonic()
    proc.signal(signal.SIGINT)
    assert proc.wait() == 0
    assert time.monotonic() - began < 2.0
    assert "startup cancelled" in proc.log()


def test_sigterm_during_startup_cancels_it(cli: Any) -> None:
    proc = cli("run", "cli_apps:hangs_in_startup", *LOOPBACK)
    proc.wait_line("startup began")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_second_signal_skips_the_drain_but_lifespan_shutdown_runs(cli: Any) -> None:
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "60")
    proc.wait_serving()
    proc.signal(signal.SIGTERM)
    proc.wait_line("draining: serving for")
    began = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert time.monotonic() - began < 10
    assert "skipping what is left of the drain" in proc.log()
    assert "lifespan shutdown complete" in proc.log()


def test_startup_failure_exits_3(cli: Any) -> None:
    proc = cli("run", "cli_apps:fails_startup", *LOOPBACK)
    assert proc.wait() == 3
    log = proc.log()
    assert "the app failed to start (failed)" in log
    assert "cache warmup failed" in log


def test_module_not_found_exits_3_and_says_so(cli: Any) -> None:
    proc = cli("run", "no_such_module_here:app", *LOOPBACK)
    assert proc.wait() == 3
    assert "module 'no_such_module_here' not found" in proc.log()


def test_module_that_raises_on_import_exits_3_and_says_so(cli: Any) -> None:
    proc = cli("run", "broken_import:app", *LOOPBACK)
    assert proc.wait() == 3
    log = proc.log()
    assert "importing module 'broken_import' raised ModuleNotFoundError" in log
    assert "not found (looked in" not in log


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_import_error_logs_the_apps_traceback(cli: Any, log_format: str) -> None:
    proc = cli("run", "import_raises:app", *LOOPBACK, "--log-format", log_format)
    assert proc.wait() == 3
    if log_format == "json":
        records = [json.loads(line) for line in proc.lines]  # every line, the last one too
        final = records[-1]
        assert final["level"] == "critical"
        assert final["event"] == "exit"
        assert final["exit_code"] == 3
        message, trace = final["message"], final["traceback"]
    else:
        log = proc.log()
        message, trace = log, log[log.index("Traceback (most recent call last):") :]
    assert "importing module 'import_raises' raised KeyError: 'DATABASE_URL'" in message
    # The app's frames, with file, line and code; none of the sidecar's or importlib's.
    assert 'import_raises.py", line 10, in <module>' in trace
    assert 'DATABASE_URL = setting("DATABASE_URL")' in trace
    assert 'import_raises.py", line 7, in setting' in trace
    assert trace.rstrip().endswith("KeyError: 'DATABASE_URL'")
    assert "importlib" not in trace
    assert "sidecar/loader.py" not in trace


def test_missing_attribute_exits_3(cli: Any) -> None:
    proc = cli("run", "cli_apps:nope", *LOOPBACK)
    assert proc.wait() == 3
    assert "'cli_apps' has no attribute 'nope'" in proc.log()


def test_factory(cli: Any) -> None:
    proc = cli("run", "cli_apps:make_app", "--factory", *LOOPBACK, "--drain-delay", "0")
    proc.wait_serving()
    assert fetch(proc.app_url + "/").text == "made by factory"
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_dotted_attribute(cli: Any) -> None:
    proc = cli("run", "cli_apps:container.app", *LOOPBACK, "--drain-delay", "0")
    proc.wait_serving()
    assert fetch(proc.app_url + "/").text == "from container"
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_port_in_use_exits_1_with_a_clear_message(cli: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = cli("run", "cli_apps:slow_startup", *LOOPBACK[:6], "--admin-port", port)
        assert proc.wait() == 1
    log = proc.log()
    assert f"cannot bind the admin port 127.0.0.1:{port}" in log
    assert "Traceback" not in log


def test_config_error_exits_2_with_every_problem(cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("lifespan:\n  startup_timout: 5\nshutdown:\n  drain_delay: -1\n")
    proc = cli("run", "cli_apps:slow_startup", "--config", str(config))
    assert proc.wait() == 2
    log = proc.log()
    assert "unknown key lifespan.startup_timout (did you mean 'startup_timeout'?)" in log
    assert "invalid value -1 for shutdown.drain_delay" in log


def test_json_logs_are_one_object_per_line(cli: Any) -> None:
    proc = cli(
        "run", "cli_apps:slow_startup", *LOOPBACK, "--log-format", "json", "--drain-delay", "0"
    )
    proc.wait_line('"message": "serving the app on')
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    records = [json.loads(line) for line in proc.lines if line.strip()]
    transitions = [r for r in records if r.get("event") == "transition"]
    assert [r["phase"] for r in transitions] == ["ready", "draining", "stopping", "stopped"]
    assert all(isinstance(r["duration_s"], float) for r in transitions)


def test_access_log(cli: Any) -> None:
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--access-log", "--drain-delay", "0")
    proc.wait_serving()
    fetch(proc.app_url + "/hello?x=1")
    proc.wait_line(r'"GET /hello\?x=1 HTTP/1.1" 200')
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_version() -> None:
    for command in (["sidecar"], [sys.executable, "-m", "sidecar"]):
        out = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
        assert __version__ in out


# -- option mapping and check-config, in-process ----------------------------------------


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env or {}, catch_exceptions=False)


def test_check_config_prints_the_effective_config() -> None:
    result = invoke("check-config")
    assert result.exit_code == 0
    document = yaml.safe_load(result.output)
    assert document["server"]["port"] == 8000
    assert document["admin"]["port"] == 8081
    assert document["lifespan"]["startup_timeout"] == 60.0
    assert document["shutdown"]["drain_delay"] == 5.0
    assert document["shutdown"]["graceful_timeout"] == 20.0
    assert document["shutdown"]["websocket_close_code"] == 1012


def test_precedence_is_flags_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 9001\n  host: 10.0.0.1\nadmin:\n  port: 9002\n")
    env = {"SIDECAR_SERVER_PORT": "9003", "SIDECAR_LIFESPAN_STARTUP_TIMEOUT": "7.5"}
    result = invoke("check-config", "--config", str(config), "--port", "9004", env=env)
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.output)
    assert document["server"]["port"] == 9004  # flag
    assert document["server"]["host"] == "10.0.0.1"  # file
    assert document["admin"]["port"] == 9002  # file
    assert document["lifespan"]["startup_timeout"] == 7.5  # env


@pytest.mark.parametrize(
    ("flag", "value", "key"),
    [
        ("--host", "127.0.0.2", ("server", "host")),
        ("--port", "1234", ("server", "port")),
        ("--root-path", "/api", ("server", "root_path")),
        ("--admin-host", "127.0.0.3", ("admin", "host")),
        ("--admin-port", "4321", ("admin", "port")),
        ("--lifespan", "on", ("lifespan", "mode")),
        ("--startup-timeout", "1.5", ("lifespan", "startup_timeout")),
        ("--shutdown-timeout", "2.5", ("lifespan", "shutdown_timeout")),
        ("--drain-delay", "0.25", ("shutdown", "drain_delay")),
        ("--graceful-timeout", "3", ("shutdown", "graceful_timeout")),
        ("--log-level", "debug", ("logging", "level")),
        ("--log-format", "json", ("logging", "format")),
    ],
)
def test_each_flag_sets_its_key(flag: str, value: str, key: tuple[str, str]) -> None:
    result = invoke("check-config", flag, value)
    assert result.exit_code == 0, result.output
    got = yaml.safe_load(result.output)[key[0]][key[1]]
    assert str(got) == value or float(got) == float(value)


def test_app_and_factory_flags() -> None:
    result = invoke("check-config", "pkg.mod:container.app", "--factory", "--access-log")
    document = yaml.safe_load(result.output)
    assert document["app"] == {"target": "pkg.mod:container.app", "factory": True, "app_dir": "."}
    assert document["logging"]["access_log"] is True


def test_a_bad_flag_value_names_the_flag_the_value_and_the_range() -> None:
    result = CliRunner().invoke(main, ["check-config", "--port", "80800"], env={})
    assert result.exit_code == 2
    assert "Invalid value for '--port': 80800 is not in the range 0<=x<=65535" in result.output
    result = CliRunner().invoke(main, ["check-config", "--lifespan", "maybe"], env={})
    assert result.exit_code == 2
    assert "'maybe' is not one of 'auto', 'on', 'off'" in result.output
    result = CliRunner().invoke(main, ["check-config", "--drain-delay", "soon"], env={})
    assert result.exit_code == 2
    assert "'soon' is not a valid float" in result.output


def test_check_config_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 80800\nshutdown:\n  drain_delay: soon\n")
    result = CliRunner().invoke(
        main,
        ["check-config", "--config", str(config)],
        env={"SIDECAR_SHUTDOWN_GRACEFUL_TIMEOUT": "-3", "SIDECAR_LIFESPAN_MODE": "maybe"},
    )
    assert result.exit_code == 2
    assert "4 problem(s)" in result.output
    assert "invalid value 80800 for server.port; expected an integer from 0 to 65535" in (
        result.output
    )
    assert "invalid value 'soon' for shutdown.drain_delay" in result.output
    assert "invalid value 'maybe' for lifespan.mode; expected one of 'auto', 'on', 'off'" in (
        result.output
    )
    assert "environment SIDECAR_SHUTDOWN_GRACEFUL_TIMEOUT: invalid value '-3'" in result.output


def test_run_without_an_app_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["run"], env={})
    assert result.exit_code == 2
    assert "no app given" in result.output


#: The README's first two commands, byte for byte: they must work on a fresh machine.
README_RUN_COMMAND = "pip install . && sidecar run sidecar.examples.demo:app"
README_TEST_COMMAND = (
    "apt-get update && apt-get install -y prometheus && pip install -e '.[test]' "
    "&& python -m pytest"
)


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)\n```$", readme, flags=re.MULTILINE | re.DOTALL)
    assert blocks[:2] == [README_RUN_COMMAND, README_TEST_COMMAND]
    # ...on the first screen: before the first section.
    assert readme.index(README_TEST_COMMAND) < readme.index("\n## ")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest\n" in ci  # CI runs the same tests


def test_readme_first_command_runs_the_demo(cli: Any) -> None:
    """The README's demo app answers and drains like any other app."""
    target = README_RUN_COMMAND.split("sidecar run ", 1)[1]
    proc = cli("run", target, *LOOPBACK, "--drain-delay", "0")
    proc.wait_serving()
    assert fetch(proc.app_url + "/").json()["greeting"] == "hello from the demo app"
    assert fetch(proc.app_url + "/echo", "POST", body=b"ping").body == b"ping"
    assert fetch(proc.app_url + "/slow?seconds=0.01").status == 200
    assert fetch(proc.app_url + "/stream").text.count("chunk") == 10
    assert fetch(proc.app_url + "/block?seconds=0.01").json() == {"slept_s": 0.01}
    readiness = fetch(proc.admin_url + "/readyz", headers={"Accept": "application/json"})
    assert "demo-pool" in [check["name"] for check in readiness.json()["checks"]]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_prestop_command_drains_the_local_sidecar(cli: Any) -> None:
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "0.5")
    proc.wait_serving()
    admin_port = proc.admin_url.rsplit(":", 1)[1]
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "prestop", "--admin-port", admin_port],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "drained"
    assert time.monotonic() - began >= 0.5
    assert fetch(proc.admin_url + "/readyz").status == 503
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_prestop_command_fails_clearly_without_a_sidecar() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = str(probe.getsockname()[1])
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "prestop", "--admin-port", free, "--timeout", "2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"could not drain via http://127.0.0.1:{free}/prestop" in result.stderr


def test_prestop_command_reaches_an_ipv6_admin_port(cli: Any) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    proc = cli(
        "run", "cli_apps:slow_startup", "--host", "127.0.0.1", "--port", "0",
        "--admin-host", "::", "--admin-port", "0", "--drain-delay", "0",
    )  # fmt: skip
    proc.wait_line("admin endpoints on")
    port = proc.lines[-1].rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "prestop", "--admin-port", port],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        env={**os.environ, "SIDECAR_ADMIN_HOST": "::"},
    )
    assert result.returncode == 0, result.stderr
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


# -- uvicorn's flags ----------------------------------------------------------------------


def check_config(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = invoke("check-config", *args, env=env)
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = yaml.safe_load(result.output)
    return document


@pytest.mark.parametrize(
    ("args", "key", "expected"),
    [
        (["--timeout-graceful-shutdown", "7"], ("shutdown", "graceful_timeout"), 7.0),
        (["--timeout-keep-alive", "5"], ("server", "keep_alive_timeout"), 5.0),
        (["--forwarded-allow-ips", "10.0.0.0/8"], ("server", "trusted_proxies"), "10.0.0.0/8"),
        (["--app-dir", "src"], ("app", "app_dir"), "src"),
        (["--loop", "asyncio"], ("server", "loop"), "asyncio"),
        (["--root-path", "/api"], ("server", "root_path"), "/api"),
        (["--workers", "3"], ("server", "workers"), 3),
        (["--uds", "/tmp/app.sock"], ("server", "uds"), "/tmp/app.sock"),
        (["--fd", "3"], ("server", "fd"), 3),
        (["--backlog", "128"], ("server", "backlog"), 128),
        (["--limit-concurrency", "50"], ("server", "max_requests_in_flight"), 50),
        (["--ws-max-size", "1024"], ("server", "ws_max_message_size"), 1024),
        (["--ws-ping-interval", "2.5"], ("server", "ws_ping_interval"), 2.5),
        (["--log-level", "warning"], ("logging", "level"), "warning"),
        (["--access-log"], ("logging", "access_log"), True),
        (["--reload"], ("reload", "enabled"), True),
        (["--reload-include", "*.html", "--reload-include", "*.py"], ("reload", "includes"),
         "*.html,*.py"),
        (["--reload-exclude", "tests/*"], ("reload", "excludes"), "tests/*"),
        (["--reload-delay", "0.5"], ("reload", "delay"), 0.5),
    ],
)  # fmt: skip
def test_uvicorn_flags_set_the_key_of_the_same_meaning(
    args: list[str], key: tuple[str, str], expected: Any
) -> None:
    assert check_config(*args)[key[0]][key[1]] == expected


def test_ssl_flags_set_the_tls_keys(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    server = check_config("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))["server"]
    assert (server["tls_certfile"], server["tls_keyfile"]) == (str(cert), str(key))


def test_reload_dir_must_exist(tmp_path: Path) -> None:
    assert check_config("--reload", "--reload-dir", str(tmp_path))["reload"]["dirs"] == str(
        tmp_path
    )
    result = invoke("check-config", "--reload", "--reload-dir", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert f"reload.dirs: no such directory {str(tmp_path / 'nope')!r}" in result.output


@pytest.mark.parametrize("flag", sorted(REFUSED_FLAGS))
def test_uvicorn_flags_without_a_meaning_here_fail_saying_what_to_use(flag: str) -> None:
    takes_value, instead = REFUSED_FLAGS[flag]
    result = CliRunner().invoke(main, ["run", "app:app", flag, *(["x"] if takes_value else [])])
    assert result.exit_code == 2
    assert f"Error: {flag} is not supported: {instead}" in result.output


def test_a_refused_flag_exits_2_from_the_real_command(cli: Any) -> None:
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--http", "httptools")
    assert proc.wait() == 2
    assert "Error: --http is not supported: the app port is the sidecar's own HTTP/1.1" in (
        proc.log()
    )
    assert "admin endpoints on" not in proc.log()


def test_log_config_says_which_flags_to_use() -> None:
    result = CliRunner().invoke(main, ["run", "app:app", "--log-config", "log.yaml"])
    assert result.exit_code == 2
    assert "--log-level, --log-format text|json, --access-log and --access-log-format" in (
        result.output
    )


def test_uvicorn_flags_asking_for_what_the_sidecar_does_are_accepted() -> None:
    assert check_config("--no-server-header", "--date-header", "--no-use-colors")


def test_help_shows_type_default_key_and_variable() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # undo click's wrapping
    assert "--drain-delay FLOAT RANGE" in text
    assert "--port INTEGER RANGE" in text
    assert "--lifespan [auto|on|off]" in text
    assert "--uds PATH" in text
    assert "--graceful-timeout, --timeout-graceful-shutdown FLOAT RANGE" in text
    assert (
        "[shutdown.drain_delay] [env var: SIDECAR_SHUTDOWN_DRAIN_DELAY; default: 5.0; x>=0]" in text
    )
    assert "[server.port] [env var: SIDECAR_SERVER_PORT; default: 8000; 0<=x<=65535]" in text
    for flag in ("--http", "--log-config", "--ssl-ciphers"):
        assert f"{flag} " not in text  # refused flags stay out of the help
    for spec in FLAG_SPECS:
        assert spec.flags[0] in text
        assert f"[{spec.path}]" in text


def test_proxy_headers_trust_loopback_like_uvicorn_unless_proxies_are_configured(
    tmp_path: Path,
) -> None:
    assert check_config()["server"]["trusted_proxies"] == ""  # the sidecar's default
    assert check_config("--proxy-headers")["server"]["trusted_proxies"] == "127.0.0.1, ::1"
    configured = {"SIDECAR_SERVER_TRUSTED_PROXIES": "10.0.0.0/8"}
    assert check_config("--proxy-headers", env=configured)["server"]["trusted_proxies"] == (
        "10.0.0.0/8"
    )
    with_ips = check_config("--proxy-headers", "--forwarded-allow-ips", "10.1.2.3")
    assert with_ips["server"]["trusted_proxies"] == "10.1.2.3"
    assert check_config("--no-proxy-headers", env=configured)["server"]["trusted_proxies"] == ""
    result = invoke("check-config", "--no-proxy-headers", "--forwarded-allow-ips", "10.1.2.3")
    assert result.exit_code == 2
    assert "--no-proxy-headers and --forwarded-allow-ips/--trusted-proxies" in result.output


def test_env_file_sets_variables_the_environment_does_not(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SIDECAR_SERVER_PORT=9100\nSIDECAR_ADMIN_PORT=9101\n# a comment\n")
    document = check_config("--env-file", str(env_file), env={"SIDECAR_ADMIN_PORT": "9200"})
    assert document["server"]["port"] == 9100
    assert document["admin"]["port"] == 9200  # already set: the environment wins
    bad = tmp_path / "bad.env"
    bad.write_text("SIDECAR_SERVER_PORT=many\n")
    result = invoke("check-config", "--env-file", str(bad))
    assert result.exit_code == 2
    assert "environment SIDECAR_SERVER_PORT: invalid value 'many'" in result.output
    result = invoke("check-config", "--env-file", str(tmp_path / "missing.env"))
    assert result.exit_code == 2
    assert "--env-file: no such file" in result.output


def test_env_file_reaches_the_app(cli: Any, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("GREETING=hello from the env file\nSIDECAR_SHUTDOWN_DRAIN_DELAY=0\n")
    proc = cli("run", "cli_apps:environ", *LOOPBACK, "--env-file", str(env_file))
    proc.wait_serving()
    assert fetch(proc.app_url + "/GREETING").text == "hello from the env file"
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "draining: serving for" not in proc.log()  # the drain delay came from the file


def test_workers_flags_set_their_keys() -> None:
    config = check_config(
        "--workers", "4", "--min-ready-workers", "3",
        "--limit-max-requests", "1000", "--limit-max-requests-jitter", "50",
    )  # fmt: skip
    assert config["server"]["workers"] == 4
    assert config["server"]["min_ready_workers"] == 3
    assert config["server"]["max_requests"] == 1000
    assert config["server"]["max_requests_jitter"] == 50


def test_reload_with_workers_names_both_keys() -> None:
    result = invoke("check-config", "--reload", "--workers", "2")
    assert result.exit_code == 2
    assert "reload.enabled (--reload) cannot be combined with server.workers (2)" in (result.output)


# -- where the app port listens ---------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.unix_path)
        self.sock = sock


def test_uds_serves_the_app_on_a_unix_socket(cli: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--uds", path, "--drain-delay", "0")
    proc.wait_line(f"serving the app on unix:{path}")
    proc.wait_line("phase starting -> ready")
    connection = UnixHTTPConnection(path)
    connection.request("GET", "/")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"ok")
    connection.close()
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert not os.path.exists(path)  # the socket file goes with the process


def test_uds_refuses_a_path_that_is_not_a_socket(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "taken"
    path.write_text("mine")
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--uds", str(path))
    assert proc.wait() == 1
    assert "the path exists and is not a socket" in proc.log()
    assert path.read_text() == "mine"


def test_fd_serves_the_app_on_an_inherited_socket(cli: Any) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fd = listener.fileno()
        proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--fd", str(fd),
                   "--drain-delay", "0", pass_fds=(fd,))  # fmt: skip
        proc.wait_line(rf"serving the app on http://127.0.0.1:{port} \(fd {fd}\)")
        proc.wait_line("phase starting -> ready")
        assert fetch(f"http://127.0.0.1:{port}/").text == "ok"
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0


def test_fd_that_is_not_a_socket_fails_clearly(cli: Any, tmp_path: Path) -> None:
    with (tmp_path / "file").open("w") as handle:
        fd = handle.fileno()
        proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--fd", str(fd), pass_fds=(fd,))
        assert proc.wait() == 1
    assert f"cannot use file descriptor {fd} as the app port (server.fd)" in proc.log()


# -- Ctrl-C at a terminal ---------------------------------------------------------------


def test_ctrl_c_at_a_terminal_skips_the_drain_delay(cli: Any) -> None:
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "60", terminal=True)
    proc.wait_serving()
    began = time.monotonic()
    proc.press_ctrl_c()
    assert proc.wait() == 0
    assert time.monotonic() - began < 10
    log = proc.log()
    assert (
        "received SIGINT from a terminal: skipping the 60s drain delay (no load balancer "
        "to wait for); in-flight requests still finish" in log
    )
    assert "lifespan shutdown complete" in log


def test_sigterm_at_a_terminal_still_drains(cli: Any) -> None:
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "0.5", terminal=True)
    proc.wait_serving()
    proc.signal(signal.SIGTERM)
    proc.wait_line("draining: serving for")
    assert proc.wait() == 0
    assert "from a terminal" not in proc.log()


def test_sigint_without_a_terminal_drains_as_sigterm_does(cli: Any) -> None:
    proc = cli("run", "cli_apps:slow_startup", *LOOPBACK, "--drain-delay", "0.5")
    proc.wait_serving()
    proc.signal(signal.SIGINT)
    proc.wait_line("draining: serving for")
    assert proc.wait() == 0
    assert "from a terminal" not in proc.log()


# -- the README's commands ---------------------------------------------------------------


def readme_command(marker: str) -> list[str]:
    """The arguments of the README's ``sidecar run`` line that contains ``marker``."""
    readme = (ROOT / "README.md").read_text()
    line = next(
        line for line in readme.splitlines() if line.startswith("sidecar run") and marker in line
    )
    return line.split()[1:]


def test_readme_uvicorn_style_command(cli: Any) -> None:
    args = readme_command("--timeout-graceful-shutdown")
    proc = cli(*args, *LOOPBACK, "--drain-delay", "0")  # loopback and free ports win
    proc.wait_serving()
    assert fetch(proc.app_url + "/").json()["greeting"] == "hello from the demo app"
    proc.wait_line(r'sidecar.access: 127\.0\.0\.1:\d+ - "GET / HTTP/1.1" 200 OK')
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def readme_quickstart() -> tuple[str, str]:
    """The quickstart's ``main.py`` and its console session, from the README."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    source = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    session = re.search(r"```console\n(.*?)```", section, flags=re.DOTALL)
    assert source is not None
    assert session is not None
    return source.group(1), session.group(1)


def test_readme_quickstart_runs_as_written(cli: Any, tmp_path: Path) -> None:
    source, session = readme_quickstart()
    (tmp_path / "main.py").write_text(source)
    proc = cli(*readme_command("main:app"), *LOOPBACK, "--drain-delay", "0", cwd=tmp_path)
    proc.wait_serving()
    exchanges = re.findall(r"^\$ (curl .*)\n((?:(?!\$ ).*\n)*)", session, flags=re.MULTILINE)
    assert len(exchanges) == 2
    for command, shown in exchanges:
        url = shlex.split(command)[-1]
        url = url.replace("localhost:8000", proc.app_url).replace("localhost:8081", proc.admin_url)
        url = url.replace("http://http://", "http://")
        assert fetch(url).text.rstrip("\n") == shown.rstrip("\n"), command
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "lifespan shutdown complete" in proc.log()


def test_readme_reload_command(cli: Any, tmp_path: Path) -> None:
    args = readme_command("--reload")
    proc = cli(*args, *LOOPBACK, cwd=tmp_path)
    proc.wait_line("reload: watching")
    proc.wait_serving()
    assert fetch(proc.app_url + "/").json()["greeting"] == "hello from the demo app"
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
