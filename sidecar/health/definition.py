"""What a health check is: the function to run, where it runs, how a result counts."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..probe import Probe

Severity = Literal["critical", "warning"]
RunsOn = Literal["app-loop", "admin-loop", "thread"]
CheckFunction = Callable[[], Any]


@dataclass(frozen=True)
class CheckDefinition:
    """What to run, where, how often, and how a result counts."""

    name: str
    probe: Probe
    run: CheckFunction
    runs_on: RunsOn
    timeout: float
    interval: float
    failure_threshold: int
    severity: Severity
    tags: tuple[str, ...]
    source: str  # "app", or "config: tcp db:5432" and the like


def is_async_callable(function: Callable[..., Any]) -> bool:
    """Tell whether calling ``function`` gives a coroutine (also for partials and objects)."""
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)
