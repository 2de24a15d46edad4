"""Turning ``module:attribute`` into an app, with errors that tell the causes apart."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.errors import AppLoadError
from sidecar.loader import load_app, load_callable, parse_target


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory of throwaway modules, importable as ``loader_*``; forgotten afterwards."""
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("loader_")]:
        del sys.modules[name]
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def _module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(source, encoding="utf-8")


@pytest.mark.parametrize("target", ["main", "main:", ":app", "a:b:c", "my-pkg:app", "m:1x"])
def test_malformed_targets(target: str) -> None:
    with pytest.raises(AppLoadError, match="expected the form `module:attribute`") as info:
        parse_target(target)
    assert info.value.kind == "target"


def test_a_dotted_attribute_is_walked(app_dir: Path) -> None:
    _module(app_dir, "loader_dotted", "class C:\n    class D:\n        @staticmethod\n"
            "        async def app(s, r, w): pass\n")  # fmt: skip
    assert parse_target("loader_dotted:C.D.app") == ("loader_dotted", "C.D.app")
    assert callable(load_app("loader_dotted:C.D.app", app_dir=str(app_dir)))


def test_a_missing_module_is_not_found(app_dir: Path) -> None:
    with pytest.raises(AppLoadError) as info:
        load_app("loader_nowhere:app", app_dir=str(app_dir))
    assert info.value.kind == "not_found"
    assert "module 'loader_nowhere' not found" in str(info.value)
    assert repr(str(app_dir.resolve())) in str(info.value)  # where it looked first


def test_a_missing_dependency_inside_the_module_is_an_import_failure(app_dir: Path) -> None:
    _module(app_dir, "loader_broken", "import loader_dependency_missing\napp = None\n")
    with pytest.raises(AppLoadError) as info:
        load_app("loader_broken:app", app_dir=str(app_dir))
    assert info.value.kind == "import_failed"
    assert "importing module 'loader_broken' raised ModuleNotFoundError" in str(info.value)


def test_a_module_that_raises_or_exits_is_an_import_failure(app_dir: Path) -> None:
    _module(app_dir, "loader_raises", "raise KeyError('missing')\n")
    _module(app_dir, "loader_exits", "raise SystemExit(4)\n")
    for name, error in (
        ("loader_raises", "KeyError: 'missing'"),
        ("loader_exits", "SystemExit: 4"),
    ):
        with pytest.raises(AppLoadError, match=error) as info:
            load_app(f"{name}:app", app_dir=str(app_dir))
        assert info.value.kind == "import_failed"
        assert isinstance(info.value.__cause__, KeyError | SystemExit)


def test_a_missing_attribute_lists_what_there_is(app_dir: Path) -> None:
    _module(app_dir, "loader_attrs", "async def application(s, r, w): pass\nvalue = 1\n")
    with pytest.raises(AppLoadError, match="has no attribute 'app'; it has: application, value"):
        load_app("loader_attrs:app", app_dir=str(app_dir))


def test_a_factory_is_called_and_must_return_the_app(app_dir: Path) -> None:
    _module(
        app_dir,
        "loader_factory",
        "async def _app(s, r, w): pass\n"
        "def create(): return _app\n"
        "async def create_async(): return _app\n"
        "def explode(): raise RuntimeError('no config')\n"
        "not_callable = 3\n",
    )
    directory = str(app_dir)
    assert load_app("loader_factory:create", factory=True, app_dir=directory).__name__ == "_app"
    with pytest.raises(AppLoadError, match="the factory returned an awaitable") as info:
        load_app("loader_factory:create_async", factory=True, app_dir=directory)
    assert info.value.kind == "factory"
    with pytest.raises(AppLoadError, match="the factory raised RuntimeError: no config"):
        load_app("loader_factory:explode", factory=True, app_dir=directory)
    with pytest.raises(AppLoadError, match="--factory was given but int"):
        load_app("loader_factory:not_callable", factory=True, app_dir=directory)
    with pytest.raises(AppLoadError, match="not an ASGI callable; if it builds the app, pass"):
        load_app("loader_factory:not_callable", app_dir=directory)


def test_load_callable_names_what_it_loads(app_dir: Path) -> None:
    _module(app_dir, "loader_checks", "def ping(): return True\nlimit = 5\n")
    assert load_callable("loader_checks:ping", what="health check 'db'", app_dir=str(app_dir))()
    with pytest.raises(AppLoadError, match="cannot load health check 'db' 'loader_checks:limit'"):
        load_callable("loader_checks:limit", what="health check 'db'", app_dir=str(app_dir))
