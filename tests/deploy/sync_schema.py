"""Bring the chart's ``config`` schema in line with the sidecar's keys.

    python -m tests.deploy.sync_schema

Adds a node for every key the sidecar has and the schema lacks (type, bounds, choices and
the key's documentation with its default), and drops nodes of keys that no longer exist.
Existing nodes keep their wording. ``test_schema_config_section_mirrors_the_sidecar_keys``
says when this is needed.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from sidecar.config import KeySpec, key_specs

SCHEMA = Path(__file__).resolve().parents[2] / "charts" / "lifespan-sidecar" / "values.schema.json"
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _default(spec: KeySpec) -> str:
    if isinstance(spec.default, bool):
        return "true" if spec.default else "false"
    if isinstance(spec.default, str):
        return json.dumps(spec.default)
    return str(spec.default)


def node(spec: KeySpec) -> dict[str, Any]:
    """The schema node of one key."""
    result: dict[str, Any] = {"description": f"{spec.doc} Default: {_default(spec)}."}
    choices = typing.get_args(spec.type) if typing.get_origin(spec.type) is typing.Literal else ()
    if choices:
        result.update(type="string", enum=list(choices))
    else:
        result["type"] = _JSON_TYPES[spec.type]
    for bound, keyword in (("min", "minimum"), ("max", "maximum")):
        if spec.bounds.get(bound) is not None:
            result[keyword] = spec.bounds[bound]
    return result


def sync(schema: dict[str, Any]) -> list[str]:
    """Update ``schema`` in place; return what changed."""
    sections = schema["properties"]["config"]["properties"]
    changes = []
    specs = [spec for spec in key_specs() if spec.path != "health.checks"]
    for spec in specs:
        section = sections.setdefault(
            spec.section, {"type": "object", "additionalProperties": False, "properties": {}}
        )
        if spec.name not in section["properties"]:
            section["properties"][spec.name] = node(spec)
            changes.append(f"added config.{spec.path}")
    known = {spec.path for spec in key_specs()}
    for name, section in sections.items():
        for key in list(section["properties"]):
            if f"{name}.{key}" not in known:
                del section["properties"][key]
                changes.append(f"removed config.{name}.{key}")
    return changes


def main() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    changes = sync(schema)
    SCHEMA.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    print("\n".join(changes) or "already in sync")


if __name__ == "__main__":
    main()
