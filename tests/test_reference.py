"""docs/configuration.md is the schema's rendering, and uvicorn's flags are all known."""

from __future__ import annotations

import click
import pytest

from sidecar.cli import run_command
from sidecar.config import key_specs
from sidecar.reference import UVICORN_FLAGS, render_reference

from .conftest import ROOT

REFERENCE = ROOT / "docs" / "configuration.md"


def test_the_reference_is_the_schema_rendered() -> None:
    assert REFERENCE.read_text() == render_reference(), (
        "docs/configuration.md is out of date: python -m sidecar.reference > docs/configuration.md"
    )


def test_the_reference_documents_every_key_and_flag() -> None:
    text = REFERENCE.read_text()
    for spec in key_specs():
        # The key's row in its section's table, naming its environment variable.
        section = text.split(f"\n## `{spec.section}`\n", 1)[1].split("\n## ", 1)[0]
        row = next(
            (line for line in section.splitlines() if line.startswith(f"| `{spec.name}` |")),
            None,
        )
        assert row is not None, f"{spec.path} missing from docs/configuration.md"
        assert f"`{spec.env}`" in row, f"{spec.env} missing from {spec.path}'s row"
        for flag in spec.flags:
            assert f"`{flag}`" in row, f"{flag} missing from {spec.path}'s row"


@pytest.mark.parametrize("flag", UVICORN_FLAGS)
def test_sidecar_run_knows_every_uvicorn_flag(flag: str) -> None:
    names = {
        opt
        for param in run_command.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
    }
    assert flag in names
