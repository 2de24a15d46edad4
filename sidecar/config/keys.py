"""Each configuration key described once, from the schema's declarations.

A ``KeySpec`` is what the sources check a value against, what the CLI builds its flags
from, and what the reference documentation and the chart's schema are generated from.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..probe import CHECK_NAME_FORM
from .schema import ENV_PREFIX, Config, HealthCheckConfig

SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
}


@dataclass(frozen=True)
class KeySpec:
    """One configuration key: where it lives, its type, default and documentation."""

    section: str
    name: str
    type: Any
    default: Any
    doc: str
    bounds: Mapping[str, Any]
    #: Command-line flags that set the key: its own name first, then aliases (uvicorn's).
    flags: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"

    @property
    def expected(self) -> str:
        """Describe the accepted form, for error messages and docs."""
        if typing.get_origin(self.type) is Literal:
            return "one of " + ", ".join(repr(c) for c in typing.get_args(self.type))
        if self.type is bool:
            return "a boolean (true or false)"
        if self.type is int:
            low, high = self.bounds.get("min"), self.bounds.get("max")
            if low is not None and high is not None:
                return f"an integer from {low} to {high}"
            return f"an integer >= {low}" if low is not None else "an integer"
        if self.type is float:
            if self.bounds.get("above") is not None:
                return (
                    f"a number of seconds > {self.bounds['above']:g} (fractions allowed, e.g. 0.5)"
                )
            return "a number of seconds >= 0 (fractions allowed, e.g. 2.5)"
        if self.type == tuple[str, ...]:
            return f"a list of names ({CHECK_NAME_FORM})"
        if self.type == tuple[HealthCheckConfig, ...]:
            return (
                "a list of check mappings, e.g. "
                "[{name: db, type: tcp, host: db.internal, port: 5432}]"
            )
        return "a string"


def _field_specs(section: str, cls: type[Any]) -> list[KeySpec]:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        bounds = {k: v for k, v in f.metadata.items() if k not in ("doc", "flags")}
        specs.append(
            KeySpec(
                section,
                f.name,
                hints[f.name],
                f.default,
                f.metadata["doc"],
                bounds,
                tuple(f.metadata.get("flags", ())),
            )
        )
    return specs


def key_specs() -> list[KeySpec]:
    """List every configuration key in declaration order."""
    return [spec for section, cls in SECTIONS.items() for spec in _field_specs(section, cls)]


def check_key_specs() -> list[KeySpec]:
    """List the keys of one ``health.checks`` entry (section ``health.checks[]``)."""
    return _field_specs("health.checks[]", HealthCheckConfig)
