"""Configuration: layers, validation messages, did-you-mean, the example file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.config import (
    Config,
    ConfigError,
    HealthCheckConfig,
    check_key_specs,
    dump_config,
    key_specs,
    load_config,
)

from .conftest import ROOT


def problems(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)  # type: ignore[arg-type]
    return info.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config()
    assert config == Config()
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8000)
    assert (config.admin.host, config.admin.port) == ("0.0.0.0", 8081)
    assert config.lifespan.startup_timeout == 60.0
    assert config.lifespan.shutdown_timeout == 30.0
    assert config.shutdown.drain_delay == 5.0
    assert config.shutdown.graceful_timeout == 20.0


def test_unknown_section_and_key_suggest_the_right_name(tmp_path: Path) -> None:
    path = write(tmp_path, "lifespn:\n  mode: on\nserver:\n  prot: 1\n")
    found = problems(path=path)
    assert any("unknown section 'lifespn' (did you mean 'lifespan'?)" in p for p in found)
    assert any("unknown key server.prot (did you mean 'port'?)" in p for p in found)


def test_wrong_types_name_the_key_the_value_and_the_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "server:\n  port: '8000'\n  host: 1\nlifespan:\n  startup_timeout: 5s\n"
        "  startup_attempts: 0\n  mode: true\nlogging:\n  access_log: 'yes'\n",
    )
    found = "\n".join(problems(path=path))
    assert "invalid value '8000' for server.port; expected an integer from 0 to 65535" in found
    assert "invalid value 1 for server.host; expected a string" in found
    assert "invalid value '5s' for lifespan.startup_timeout; expected a number of seconds" in found
    assert "invalid value 0 for lifespan.startup_attempts; expected an integer >= 1" in found
    assert "invalid value True for lifespan.mode; expected one of 'auto', 'on', 'off'" in found
    assert "invalid value 'yes' for logging.access_log; expected a boolean" in found


def test_negative_durations_are_rejected() -> None:
    for key in ("lifespan.startup_timeout", "shutdown.drain_delay", "shutdown.graceful_timeout"):
        found = problems(overrides={key: "-0.5"})
        assert found == [
            f"command line: invalid value '-0.5' for {key}; expected a number of seconds >= 0 "
            "(fractions allowed, e.g. 2.5)"
        ]


def test_port_clash() -> None:
    found = problems(overrides={"server.port": "9000", "admin.port": "9000"})
    assert "server.port and admin.port are both 9000" in found[0]
    # different explicit addresses do not clash
    load_config(
        overrides={
            "server.port": "9000",
            "admin.port": "9000",
            "server.host": "127.0.0.1",
            "admin.host": "127.0.0.2",
        }
    )


def test_env_typos_are_errors_but_foreign_sidecar_variables_are_ignored() -> None:
    found = problems(env={"SIDECAR_SHUTDOWN_DRAIN_DELAI": "1"})
    assert "did you mean 'SIDECAR_SHUTDOWN_DRAIN_DELAY'" in found[0]
    # Kubernetes service links of a Service named "sidecar" are not settings
    load_config(env={"SIDECAR_SERVICE_HOST": "10.0.0.1", "SIDECAR_PORT": "tcp://10.0.0.1:80"})
    found = problems(env={"SIDECAR_SERVER_PORT_8000_TCP": "tcp://10.0.0.1:8000"})
    assert "enableServiceLinks: false" in found[0]


def test_booleans_from_the_environment() -> None:
    assert load_config(env={"SIDECAR_LOGGING_ACCESS_LOG": "yes"}).logging.access_log is True
    assert load_config(env={"SIDECAR_APP_FACTORY": "0"}).app.factory is False
    assert "expected a boolean" in problems(env={"SIDECAR_APP_FACTORY": "maybe"})[0]


SAMPLES = {
    "server.root_path": "/x",
    "server.trusted_proxies": "10.0.0.0/8",
    "admin.allow_from": "10.0.0.0/8",
    "app.target": "pkg.mod:app",
    "admin.token": "a-token-of-32-bytes-for-the-test",
}


def test_every_key_has_an_environment_variable(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("not checked here, but long enough for a token")
    paired: dict[str, dict[str, str]] = {
        name: {"SIDECAR_SERVER_TLS_CERTFILE": str(pem), "SIDECAR_SERVER_TLS_KEYFILE": str(pem)}
        for name in ("SIDECAR_SERVER_TLS_CERTFILE", "SIDECAR_SERVER_TLS_KEYFILE")
    }
    # Settings of worker processes apply with several workers only.
    for name in ("SIDECAR_SERVER_MAX_REQUESTS", "SIDECAR_SERVER_MAX_WORKER_MEMORY"):
        paired[name] = {name: "1", "SIDECAR_SERVER_WORKERS": "2"}
    for spec in key_specs():
        if spec.path == "health.checks":  # a list, written in YAML; tested on its own
            continue
        lowest = max(int(spec.bounds.get("min", 1)), 1)
        samples = {bool: "true", int: str(lowest), float: "1.5", str: "/x"}
        value = SAMPLES.get(spec.path) or samples.get(spec.type, "")
        if spec.path in ("server.tls_certfile", "server.tls_keyfile", "admin.token_file"):
            value = str(pem)
        if not value:  # a Literal: use its first choice
            value = spec.type.__args__[0]
        env = {spec.env: value}
        if spec.env in paired:
            env = paired[spec.env]
        config = load_config(env=env)
        got = getattr(getattr(config, spec.section), spec.name)
        assert str(got).lower() in (value.lower(), str(float(value)) if spec.type is float else "")


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    assert "not valid YAML" in problems(path=write(tmp_path, "server: [unclosed"))[0]
    assert "cannot read config file" in problems(path=tmp_path / "absent.yaml")[0]
    assert "top level must be a mapping" in problems(path=write(tmp_path, "- 1\n"))[0]


def test_root_path_form() -> None:
    assert "server.root_path" in problems(overrides={"server.root_path": "api/"})[0]


def test_dump_round_trips() -> None:
    config = load_config(overrides={"server.port": "1234", "logging.format": "json"})
    assert load_config(env={}, path=None, overrides=None) != config
    document = yaml.safe_load(dump_config(config))
    assert document["server"]["port"] == 1234


def test_dump_redacts_the_password_of_a_check_url() -> None:
    check = {"name": "search", "type": "http", "url": "https://ops:hunter2@search:9200/_health"}
    config = load_config(env={}, overrides={"health.checks": [check]})
    assert config.health.checks[0].url == check["url"]  # the check itself still uses it
    dumped = dump_config(config)
    assert "hunter2" not in dumped
    assert yaml.safe_load(dumped)["health"]["checks"][0]["url"] == (
        "https://ops:<redacted>@search:9200/_health"
    )
    # Handed to another process of the sidecar (a worker), the URL stays whole.
    assert config.to_document()["health"]["checks"][0]["url"] == check["url"]


def test_the_example_config_is_valid_and_documents_every_key() -> None:
    example = ROOT / "sidecar.example.yaml"
    config = load_config(path=example)
    assert config.app.target == "sidecar.examples.demo:app"
    text = example.read_text()
    for spec in key_specs():
        assert f"{spec.name}:" in text, f"{spec.path} missing from the example config"


# -- health.checks: a list of mappings ---------------------------------------------------

_CHECKS = """\
health:
  checks:
    - name: db
      type: tcp
      host: db.internal
      port: 5432
    - name: search
      type: http
      url: http://search:9200/_cluster/health
      timeout: 0.5
      interval: 2
      severity: warning
      tags: [optional, search]
    - name: cache
      type: callable
      target: myproject.health:check_cache
      probe: liveness
      failure_threshold: 5
"""


def test_health_checks_from_the_file(tmp_path: Path) -> None:
    checks = load_config(path=write(tmp_path, _CHECKS)).health.checks
    assert checks == (
        HealthCheckConfig(name="db", type="tcp", host="db.internal", port=5432),
        HealthCheckConfig(
            name="search",
            type="http",
            url="http://search:9200/_cluster/health",
            timeout=0.5,
            interval=2.0,
            severity="warning",
            tags=("optional", "search"),
        ),
        HealthCheckConfig(
            name="cache",
            type="callable",
            target="myproject.health:check_cache",
            probe="liveness",
            failure_threshold=5,
        ),
    )
    assert (checks[0].timeout, checks[0].interval, checks[0].failure_threshold) == (1.0, 5.0, 2)


def test_health_checks_from_the_environment_replace_the_file(tmp_path: Path) -> None:
    config = load_config(
        path=write(tmp_path, _CHECKS),
        env={"SIDECAR_HEALTH_CHECKS": "[{name: pg, type: tcp, host: pg, port: 5432}]"},
    )
    assert [c.name for c in config.health.checks] == ["pg"]
    assert load_config(env={"SIDECAR_HEALTH_CHECKS": ""}).health.checks == ()
    found = problems(env={"SIDECAR_HEALTH_CHECKS": "[{name: pg"})
    assert found == [
        "environment SIDECAR_HEALTH_CHECKS: invalid value '[{name: pg' for health.checks; "
        "expected a list of check mappings, e.g. "
        "[{name: db, type: tcp, host: db.internal, port: 5432}]"
    ]
    found = problems(env={"SIDECAR_HEALTH_CHECKS": '[{"name": "pg", "type": "tcp"}]'})
    assert "environment SIDECAR_HEALTH_CHECKS: missing key health.checks[0].host" in found[0]


def test_health_check_errors_name_the_item_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
health:
  checks:
    - {name: db, type: tcp, host: db, port: 5432, timout: 1}
    - {name: search, type: http, url: "ftp://search", timeout: 0, port: 80}
    - {name: db, type: tcp, host: other, port: 70000}
    - just a string
    - {name: ping, type: callable, target: "no colon", tags: [ok, "not ok"]}
    - {type: tcp, severity: fatal, probe: startup}
    - {name: "bad/name", type: grpc}
""",
    )
    found = [p.removeprefix(f"{path}: ") for p in problems(path=path)]
    assert found == [
        "unknown key health.checks[0].timout (did you mean 'timeout'?); keys of a check: "
        "name, type, probe, host, port, url, target, timeout, interval, failure_threshold, "
        "severity, tags",
        "invalid value 0 for health.checks[1].timeout; expected a number of seconds > 0 "
        "(fractions allowed, e.g. 0.5)",
        "key health.checks[1].port does not apply to type 'http' (it belongs to type 'tcp')",
        "invalid value 'ftp://search' for health.checks[1].url; expected an http:// or "
        "https:// URL, e.g. http://127.0.0.1:8080/healthz",
        "invalid value 70000 for health.checks[2].port; expected an integer from 1 to 65535",
        "duplicate check name 'db' at health.checks[2].name (also at health.checks[0].name); "
        "names are unique across readiness and liveness",
        "invalid value 'just a string' for health.checks[3]; expected a mapping with at least "
        "name and type, e.g. {name: db, type: tcp, host: db.internal, port: 5432}",
        "invalid value ['ok', 'not ok'] for health.checks[4].tags; expected a list of names "
        "(1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit)",
        "invalid value 'ping' for health.checks[4].name; it is a built-in check "
        "(draining, event-loop, lifespan, ping, startup); choose another name",
        "invalid value 'no colon' for health.checks[4].target; expected the form "
        "`module:attribute`, e.g. `myproject.health:check_cache`",
        "invalid value 'fatal' for health.checks[5].severity; expected one of 'critical', "
        "'warning'",
        "invalid value 'startup' for health.checks[5].probe; expected one of 'readiness', "
        "'liveness'",
        "missing key health.checks[5].name; every check needs a name and a type",
        "missing key health.checks[5].host (required for type 'tcp')",
        "missing key health.checks[5].port (required for type 'tcp')",
        "invalid value 'grpc' for health.checks[6].type; expected one of 'tcp', 'http', 'callable'",
        "invalid value 'bad/name' for health.checks[6].name; expected 1 to 63 letters, "
        "digits, '.', '_' or '-', starting with a letter or digit",
    ]


def test_health_checks_must_be_a_list(tmp_path: Path) -> None:
    found = problems(path=write(tmp_path, "health:\n  checks:\n    name: db\n"))
    assert "invalid value {'name': 'db'} for health.checks; expected a list" in found[0]


def test_loop_lag_limits_must_be_ordered() -> None:
    found = problems(overrides={"health.ready_max_loop_lag": "2", "health.live_max_loop_lag": "1"})
    assert found == [
        "health.live_max_loop_lag (1) is smaller than health.ready_max_loop_lag (2); expected "
        "live_max_loop_lag >= ready_max_loop_lag (a restart for a stall that readiness "
        "tolerates), or 0 to turn the liveness check off"
    ]
    # 0 turns a check off, so it is never "smaller"
    load_config(overrides={"health.ready_max_loop_lag": "2", "health.live_max_loop_lag": "0"})


def test_health_checks_round_trip_through_check_config_output(tmp_path: Path) -> None:
    config = load_config(path=write(tmp_path, _CHECKS))
    dumped = write(tmp_path, dump_config(config))
    assert load_config(path=dumped) == config
    document = yaml.safe_load(dumped.read_text())
    # only the keys of each check's type are written
    assert "url" not in document["health"]["checks"][0]
    assert document["health"]["checks"][1]["tags"] == ["optional", "search"]


def test_docs_describe_every_key_of_a_check() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    entries = reference.split("### `health.checks` entries", 1)[1].split("\n## ", 1)[0]
    example = (ROOT / "sidecar.example.yaml").read_text()
    for spec in check_key_specs():
        assert f"| `{spec.name}` |" in entries, (
            f"health.checks[].{spec.name} missing from docs/configuration.md"
        )
        assert f"{spec.name}:" in example, f"health.checks[].{spec.name} missing from the example"


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"server.workers": "0"}, "invalid value '0' for server.workers; expected an integer >= 1"),
        (
            {"server.workers": "2", "server.min_ready_workers": "3"},
            "server.min_ready_workers (3) is more than server.workers (2); expected at most 2",
        ),
        (
            {"server.max_requests": "100"},
            "server.max_requests (100) replaces worker processes, but server.workers is 1",
        ),
        (
            {"server.workers": "2", "reload.enabled": "true"},
            "reload.enabled (--reload) cannot be combined with server.workers (2)",
        ),
    ],
)
def test_worker_settings_that_cannot_work_are_errors(
    overrides: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert any(problem in message for message in info.value.problems), info.value.problems


def test_a_configuration_handed_over_whole_is_the_same_configuration(tmp_path: Path) -> None:
    # How the supervisor gives a worker its configuration: secrets and checks included.
    config = load_config(
        env={"SIDECAR_ADMIN_TOKEN": "a-token-of-32-bytes-for-the-test"},
        overrides={
            "server.workers": "3",
            "health.checks": "[{name: db, type: tcp, host: db, port: 5432, tags: [data]}]",
        },
    )
    assert load_config(document=config.to_document()) == config
    assert "a-token-of-32-bytes-for-the-test" not in str(config.to_dict())  # printing redacts
