"""Configuration: layers, validation messages, did-you-mean, the example file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.config import Config, ConfigError, dump_config, key_specs, load_config

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
}


def test_every_key_has_an_environment_variable(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("not checked here")
    paired = {"SIDECAR_SERVER_TLS_CERTFILE": str(pem), "SIDECAR_SERVER_TLS_KEYFILE": str(pem)}
    for spec in key_specs():
        lowest = max(int(spec.bounds.get("min", 1)), 1)
        samples = {bool: "true", int: str(lowest), float: "1.5", str: "/x"}
        value = SAMPLES.get(spec.path) or samples.get(spec.type, "")
        if spec.path in ("server.tls_certfile", "server.tls_keyfile", "admin.token_file"):
            value = str(pem)
        if not value:  # a Literal: use its first choice
            value = spec.type.__args__[0]
        env = {spec.env: value}
        if spec.env in paired:
            env = paired
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


def test_the_example_config_is_valid_and_documents_every_key() -> None:
    example = ROOT / "sidecar.example.yaml"
    config = load_config(path=example)
    assert config.app.target == "sidecar.examples.demo:app"
    text = example.read_text()
    for spec in key_specs():
        assert f"{spec.name}:" in text, f"{spec.path} missing from the example config"


def test_readme_documents_every_key() -> None:
    readme = (ROOT / "README.md").read_text()
    for spec in key_specs():
        assert f"`{spec.path}`" in readme, f"{spec.path} missing from README.md"
        assert f"`{spec.env}`" in readme, f"{spec.env} missing from README.md"
