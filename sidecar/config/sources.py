"""Where configuration values come from: defaults < YAML file < environment < flags.

Every value is checked against its key's declaration in ``schema``; problems are
collected across all layers and raised together as one ``ConfigError``, each naming the
key path, the bad value and the expected form, with a "did you mean" for typos.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..probe import BUILTIN_CHECKS, CHECK_NAME, CHECK_NAME_FORM
from ..redact import REDACTED
from .keys import SECTIONS, KeySpec, check_key_specs, key_specs
from .rules import check_rules
from .schema import (
    ENV_PREFIX,
    Config,
    HealthCheckConfig,
)

_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

_SPECS = {spec.path: spec for spec in key_specs()}
_ENV_NAMES = {spec.env: spec for spec in _SPECS.values()}
_CHECK_SPECS = {spec.name: spec for spec in check_key_specs()}


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Invalid(Exception):
    """A value does not fit its key; ``problems`` replaces the generic message if given."""

    def __init__(self, problems: typing.Sequence[str] = ()) -> None:
        super().__init__()
        self.problems = list(problems)


def _coerce(spec: KeySpec, value: Any, *, from_text: bool) -> Any:
    """Convert ``value`` to the key's type or raise ``_Invalid``.

    ``from_text`` is set for environment variables and flags, whose values are strings
    that still need parsing; YAML values arrive already typed and must match.
    """
    kind = spec.type
    if kind == tuple[HealthCheckConfig, ...]:
        return _coerce_checks(spec, value, from_text=from_text)
    if kind == tuple[str, ...]:
        if from_text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, str) and CHECK_NAME.fullmatch(item) for item in value
        ):
            raise _Invalid
        return tuple(value)
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        text = value.strip().lower() if from_text and isinstance(value, str) else value
        if text not in choices:
            raise _Invalid
        return text
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        raise _Invalid
    if kind is int or kind is float:
        if isinstance(value, bool):
            raise _Invalid
        if from_text and isinstance(value, str):
            try:
                value = int(value) if kind is int else float(value)
            except ValueError:
                raise _Invalid from None
        if kind is int and not isinstance(value, int):
            raise _Invalid
        if kind is float:
            if (
                not isinstance(value, int | float)
                or value != value
                or value
                in (
                    float("inf"),
                    float("-inf"),
                )
            ):
                raise _Invalid
            value = float(value)
        low, high = spec.bounds.get("min"), spec.bounds.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            raise _Invalid
        above = spec.bounds.get("above")
        if above is not None and value <= above:
            raise _Invalid
        return value
    if kind is str:
        if not isinstance(value, str):
            raise _Invalid
        return value
    raise TypeError(f"unsupported config type {kind!r} for {spec.path}")  # pragma: no cover


def _coerce_checks(spec: KeySpec, value: Any, *, from_text: bool) -> tuple[HealthCheckConfig, ...]:
    """Validate ``health.checks``; every problem names its item and key, e.g. ``[1].timeout``."""
    if from_text and isinstance(value, str):
        # From the environment the list is written in YAML (or JSON, a subset of it).
        import yaml  # imported when needed: it costs startup time and memory

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise _Invalid from None
        if value is None:
            value = []
    if not isinstance(value, list):
        raise _Invalid
    problems: list[str] = []
    checks: list[HealthCheckConfig] = []
    first_use: dict[str, str] = {}
    for index, item in enumerate(value):
        where = f"{spec.path}[{index}]"
        count = len(problems)
        values = _check_values(where, item, problems)
        name = values.get("name")
        if isinstance(name, str):
            if name in first_use:
                problems.append(
                    f"duplicate check name {name!r} at {where}.name (also at "
                    f"{first_use[name]}.name); names are unique across readiness and liveness"
                )
            first_use.setdefault(name, where)
        if len(problems) == count:
            checks.append(HealthCheckConfig(**values))
    if problems:
        raise _Invalid(problems)
    return tuple(checks)


def check_settings(
    settings: Mapping[str, Any], problems: list[str], where: Callable[[str], str]
) -> dict[str, Any]:
    """Check a health check's settings by the rules of ``health.checks`` entries.

    The one validation of check settings, for configured checks and for the ones the app
    registers: each problem names ``where(key)``, the value and the expected form.
    Returns the valid values, coerced.
    """
    values: dict[str, Any] = {}
    for key, raw in settings.items():
        spec = _CHECK_SPECS[key]
        try:
            values[key] = _coerce(spec, raw, from_text=False)
        except _Invalid:
            problems.append(f"invalid value {raw!r} for {where(key)}; expected {spec.expected}")
    name = values.get("name")
    if name is not None and not CHECK_NAME.fullmatch(name):
        problems.append(f"invalid value {name!r} for {where('name')}; expected {CHECK_NAME_FORM}")
    elif name in BUILTIN_CHECKS:
        problems.append(
            f"invalid value {name!r} for {where('name')}; it is a built-in check "
            f"({', '.join(sorted(BUILTIN_CHECKS))}); choose another name"
        )
    return values


def _check_values(where: str, item: Any, problems: list[str]) -> dict[str, Any]:
    """Coerce one check's keys, appending every problem found; return the valid values."""
    if not isinstance(item, dict):
        problems.append(
            f"invalid value {item!r} for {where}; expected a mapping with at least "
            "name and type, e.g. {name: db, type: tcp, host: db.internal, port: 5432}"
        )
        return {}
    unknown = [key for key in item if str(key) not in _CHECK_SPECS]
    for key in unknown:
        problems.append(
            f"unknown key {where}.{key}{_did_you_mean(str(key), _CHECK_SPECS)}; "
            f"keys of a check: {', '.join(_CHECK_SPECS)}"
        )
    known = {str(key): raw for key, raw in item.items() if key not in unknown}
    values = check_settings(known, problems, lambda key: f"{where}.{key}")
    for required in ("name", "type"):
        if required not in item:
            problems.append(f"missing key {where}.{required}; every check needs a name and a type")
    kind = values.get("type")
    if kind is not None:
        for key in item:
            types = _CHECK_SPECS[key].bounds.get("types") if key in _CHECK_SPECS else None
            if types is not None and kind not in types:
                problems.append(
                    f"key {where}.{key} does not apply to type {kind!r} "
                    f"(it belongs to type {types[0]!r})"
                )
        required_by_type = {"tcp": ("host", "port"), "http": ("url",), "callable": ("target",)}
        for key in required_by_type[kind]:
            if key not in item:
                problems.append(f"missing key {where}.{key} (required for type {kind!r})")
    url = values.get("url")
    if url is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
        problems.append(
            f"invalid value {url!r} for {where}.url; expected an http:// or https:// URL, "
            "e.g. http://127.0.0.1:8080/healthz"
        )
    target = values.get("target")
    if target is not None and not _TARGET.fullmatch(target):
        problems.append(
            f"invalid value {target!r} for {where}.target; expected the form "
            "`module:attribute`, e.g. `myproject.health:check_cache`"
        )
    host = values.get("host")
    if host is not None and not host.strip():
        problems.append(f"invalid value {host!r} for {where}.host; expected a host name or address")
    return values


class _Layer:
    """Collect validated values and problems from one source (file, env, flags)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        self.values: dict[str, Any] = {}

    def put(self, spec: KeySpec, value: Any, *, from_text: bool, where: str) -> None:
        try:
            self.values[spec.path] = _coerce(spec, value, from_text=from_text)
        except _Invalid as exc:
            if exc.problems:
                self.problems.extend(f"{where}: {problem}" for problem in exc.problems)
            else:
                shown = REDACTED if spec.bounds.get("secret") else repr(value)
                self.problems.append(
                    f"{where}: invalid value {shown} for {spec.path}; expected {spec.expected}"
                )


def _file_layer(path: Path, problems: list[str]) -> _Layer:
    layer = _Layer(str(path), problems)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{path}: cannot read config file: {exc.strerror or exc}")
        return layer
    import yaml  # imported when needed: it costs startup time and memory

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problems.append(f"{path}: not valid YAML: {exc}")
        return layer
    return _document_layer(data, str(path), problems)


def _document_layer(data: Any, source: str, problems: list[str]) -> _Layer:
    """The values of a configuration document (a file's YAML, or a mapping given whole)."""
    layer = _Layer(source, problems)
    path = source
    if data is None:
        return layer
    if not isinstance(data, dict):
        problems.append(
            f"{path}: the top level must be a mapping of sections "
            f"({', '.join(SECTIONS)}), got {type(data).__name__}"
        )
        return layer
    for section, body in data.items():
        if section not in SECTIONS:
            problems.append(
                f"{path}: unknown section {section!r}{_did_you_mean(str(section), SECTIONS)}; "
                f"expected one of: {', '.join(SECTIONS)}"
            )
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            problems.append(
                f"{path}: section {section!r} must be a mapping of keys, "
                f"got {type(body).__name__} {body!r}"
            )
            continue
        names = [s.name for s in _SPECS.values() if s.section == section]
        for key, value in body.items():
            spec = _SPECS.get(f"{section}.{key}")
            if spec is None:
                problems.append(
                    f"{path}: unknown key {section}.{key}{_did_you_mean(str(key), names)}; "
                    f"keys of {section!r}: {', '.join(names)}"
                )
                continue
            layer.put(spec, value, from_text=False, where=str(path))
    return layer


def _env_layer(env: Mapping[str, str], problems: list[str]) -> _Layer:
    layer = _Layer("environment", problems)
    section_prefixes = {f"{ENV_PREFIX}{s.upper()}_": s for s in SECTIONS}
    for name, value in env.items():
        spec = _ENV_NAMES.get(name)
        if spec is not None:
            layer.put(spec, value, from_text=True, where=f"environment {name}")
            continue
        # Only a name inside one of our sections is a typo; other SIDECAR_* variables
        # (for instance Kubernetes service links of a Service named "sidecar") are not ours.
        for prefix in section_prefixes:
            if name.startswith(prefix):
                hint = _did_you_mean(name, _ENV_NAMES)
                if value.startswith(("tcp://", "udp://")) or name.endswith(
                    ("_SERVICE_HOST", "_SERVICE_PORT")
                ):
                    hint += (
                        "; this looks like a Kubernetes service link variable: set "
                        "enableServiceLinks: false on the pod or rename the Service"
                    )
                problems.append(f"environment {name}: unknown setting{hint}")
                break
    return layer


def _override_layer(overrides: Mapping[str, Any], problems: list[str]) -> _Layer:
    layer = _Layer("command line", problems)
    for path, value in overrides.items():
        if value is None:
            continue
        spec = _SPECS.get(path)
        if spec is None:  # a programming error in the CLI, not user input
            raise KeyError(f"unknown config key {path!r}")
        layer.put(spec, value, from_text=isinstance(value, str), where="command line")
    return layer


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    document: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration; raise ``ConfigError`` listing every problem.

    ``overrides`` maps key paths (``"server.port"``) to flag values; ``None`` means unset.
    The environment is passed in, never read here, so callers and tests control it.
    ``document`` is a whole configuration as a mapping (what ``Config.to_document``
    gives), read like a file.
    """
    problems: list[str] = []
    layers = []
    if document is not None:
        layers.append(_document_layer(dict(document), "the supervisor's config", problems))
    if path is not None:
        layers.append(_file_layer(Path(path), problems))
    layers.append(_env_layer(env or {}, problems))
    layers.append(_override_layer(overrides or {}, problems))

    merged: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for layer in layers:
        for key_path, value in layer.values.items():
            section, name = key_path.split(".", 1)
            merged[section][name] = value
    if problems:
        raise ConfigError(problems)

    config = Config(**{s: SECTIONS[s](**values) for s, values in merged.items()})
    check_rules(config, problems)
    if problems:
        raise ConfigError(problems)
    return config


def require_target(config: Config) -> None:
    """Raise ``ConfigError`` when no app target is configured."""
    if not config.app.target:
        raise ConfigError(
            [
                "no app given: pass APP as `module:attribute` (e.g. `myproject.main:app`), "
                f"or set app.target in the config file or {_SPECS['app.target'].env}"
            ]
        )


def dump_config(config: Config) -> str:
    """Render the effective configuration as YAML."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
