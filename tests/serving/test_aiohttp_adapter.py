"""The adapter is the only place that touches aiohttp's private API, and it says so loudly."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol
from packaging.requirements import Requirement
from packaging.version import Version

from sidecar.serving import _aiohttp

from ..conftest import ROOT

PACKAGE = ROOT / "sidecar"
ADAPTER = PACKAGE / "serving" / "_aiohttp.py"
# The public face of aiohttp: the top-level names and the web module.
PUBLIC_MODULES = {"aiohttp", "aiohttp.web"}


def _aiohttp_private_names() -> set[str]:
    """Every ``_name`` (not dunder) that aiohttp's own code defines or uses on objects."""
    names: set[str] = set()
    for source in Path(aiohttp.__file__).parent.glob("*.py"):
        names.update(re.findall(r"\.(_[A-Za-z][A-Za-z0-9_]*)\b", source.read_text("utf-8")))
    return {name for name in names if not name.startswith("__")}


def _own_names(tree: ast.Module) -> set[str]:
    """Private names a module defines itself: set up in ``__init__``, slots, methods.

    An attribute assigned elsewhere (``self._parser = None`` in a callback) may well be
    an inherited one of aiohttp's, so it does not count as the module's own.
    """
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            own.add(node.name)
            if node.name == "__init__":
                own.update(
                    target.attr
                    for target in ast.walk(node)
                    if isinstance(target, ast.Attribute) and isinstance(target.ctx, ast.Store)
                )
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            own.update(c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant))
    return own


def _modules() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if path != ADAPTER]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_adapter_touches_aiohttp_internals(path: Path) -> None:
    tree = ast.parse(path.read_text("utf-8"))
    private = _aiohttp_private_names() - _own_names(tree)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("aiohttp") and alias.name not in PUBLIC_MODULES:
                    problems.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiohttp"):
            if node.module not in PUBLIC_MODULES:
                problems.append(f"line {node.lineno}: from {node.module} import ...")
            elif node.module == "aiohttp":
                for alias in node.names:
                    if alias.name != "web" and alias.name not in aiohttp.__all__:
                        problems.append(f"line {node.lineno}: from aiohttp import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in private:
            problems.append(f"line {node.lineno}: .{node.attr}")
    assert problems == [], f"{path.relative_to(ROOT)} uses aiohttp internals: {problems}"


def test_the_scan_sees_what_the_adapter_uses() -> None:
    # The check above must be able to fail: the adapter's own private uses are found.
    tree = ast.parse(ADAPTER.read_text("utf-8"))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert {"_drain_helper", "_parser", "_reading_paused"} <= used & _aiohttp_private_names()


def test_a_missing_internal_fails_naming_the_version_and_the_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(BaseProtocol, "_drain_helper")
    with pytest.raises(_aiohttp.AiohttpVersionError) as info:
        _aiohttp._check()
    message = str(info.value)
    assert f"aiohttp {aiohttp.__version__} is installed" in message
    assert "lacks BaseProtocol._drain_helper" in message
    assert f"pip install 'aiohttp{_aiohttp.SUPPORTED}'" in message


def test_the_supported_range_is_the_one_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    declared = [Requirement(d) for d in project["dependencies"] if d.startswith("aiohttp")]
    assert len(declared) == 1
    assert str(declared[0].specifier) == str(Requirement(f"aiohttp{_aiohttp.SUPPORTED}").specifier)
    assert Version(aiohttp.__version__) in declared[0].specifier
