"""Turn ``module:attribute`` into an ASGI callable, with errors that say what went wrong."""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from traceback import TracebackException
from typing import Any

from .errors import AppLoadError
from .types import ASGIApp

_FORM = "expected the form `module:attribute`, e.g. `myproject.main:app` or `pkg.mod:container.app`"


# Frames of the sidecar's own loading and of Python's import machinery tell the reader
# nothing about their app: a traceback shows only the app's frames.
_LOADER = {__file__, str(Path(__file__).resolve())}
_IMPORTLIB = str(Path(importlib.__file__ or "importlib/__init__.py").resolve())


def _own_frame(filename: str) -> bool:
    return filename in _LOADER or filename == _IMPORTLIB or filename.startswith("<frozen importlib")


def app_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` (and what it chains), with only the app's frames."""
    trace = traceback.TracebackException.from_exception(exc)
    chain: TracebackException | None = trace
    seen: set[int] = set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        chain.stack = traceback.StackSummary.from_list(
            [frame for frame in chain.stack if not _own_frame(frame.filename)]
        )
        chain = chain.__cause__ or chain.__context__
    return "".join(trace.format()).rstrip()


def parse_target(target: str) -> tuple[str, str]:
    """Split ``module:attr.path`` into its two halves or raise ``AppLoadError``."""
    module, sep, attribute = target.partition(":")
    if not sep or not module or not attribute or ":" in attribute:
        raise AppLoadError("target", f"invalid app {target!r}: {_FORM}")
    parts = [*module.split("."), *attribute.split(".")]
    if not all(part.isidentifier() for part in parts):
        raise AppLoadError("target", f"invalid app {target!r}: {_FORM}")
    return module, attribute


def _import(module_name: str, target: str, what: str = "app") -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "not found" when the missing module is the target itself or one of its
        # parent packages; a missing dependency imported *inside* the module is an
        # import failure of the user's code and must say so.
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise AppLoadError(
                "not_found",
                f"cannot load {what} {target!r}: module {module_name!r} not found "
                f"(looked in sys.path, starting with {sys.path[0]!r}); "
                "check the module path and the app_dir setting",
            ) from exc
        raise AppLoadError(
            "import_failed",
            f"cannot load {what} {target!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {exc}",
            trace=app_traceback(exc),
        ) from exc
    except (Exception, SystemExit) as exc:
        raise AppLoadError(
            "import_failed",
            f"cannot load {what} {target!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {exc}",
            trace=app_traceback(exc),
        ) from exc


def _load_attribute(target: str, what: str, app_dir: str | None) -> Any:
    module_name, attribute = parse_target(target)
    if app_dir is not None:
        directory = str(Path(app_dir).resolve())
        if directory not in sys.path:
            sys.path.insert(0, directory)
    obj: Any = _import(module_name, target, what)
    walked = module_name
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            available = sorted(n for n in dir(obj) if not n.startswith("_"))[:20]
            raise AppLoadError(
                "attribute",
                f"cannot load {what} {target!r}: {walked!r} has no attribute {part!r}"
                + (f"; it has: {', '.join(available)}" if available else ""),
            ) from None
        walked = f"{walked}:{part}" if walked == module_name else f"{walked}.{part}"
    return obj


def load_callable(target: str, *, what: str, app_dir: str | None = ".") -> Callable[[], Any]:
    """Import ``target`` (``module:attribute``) and return it; it must be callable.

    ``what`` names the thing in error messages, e.g. "health check 'db'".
    """
    obj = _load_attribute(target, what, app_dir)
    if not callable(obj):
        raise AppLoadError(
            "not_callable",
            f"cannot load {what} {target!r}: got a {type(obj).__name__}, which is not callable",
        )
    return obj  # type: ignore[no-any-return]


def load_app(target: str, *, factory: bool = False, app_dir: str | None = ".") -> ASGIApp:
    """Import ``target`` and return the ASGI app (calling it first when ``factory``)."""
    obj = _load_attribute(target, "app", app_dir)
    if factory:
        if not callable(obj):
            raise AppLoadError(
                "not_callable",
                f"cannot load app {target!r}: --factory was given but {type(obj).__name__} "
                "object is not callable",
            )
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(
                "factory",
                f"cannot load app {target!r}: the factory raised {type(exc).__name__}: {exc}",
                trace=app_traceback(exc),
            ) from exc
        if inspect.isawaitable(obj):
            if inspect.iscoroutine(obj):
                obj.close()  # never awaited; closing it avoids a RuntimeWarning
            raise AppLoadError(
                "factory",
                f"cannot load app {target!r}: the factory returned an awaitable; "
                "factories must be plain functions that return the app",
            )
    if not callable(obj):
        raise AppLoadError(
            "not_callable",
            f"cannot load app {target!r}: got a {type(obj).__name__}, which is not an ASGI "
            "callable; if it builds the app, pass --factory",
        )
    return obj  # type: ignore[no-any-return]
