"""The app's side: register readiness and liveness checks with the sidecar."""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar, Token

from ..config import check_settings
from ..errors import CheckRegistrationError
from ..probe import CHECK_FAILURE_THRESHOLD, CHECK_INTERVAL, CHECK_TIMEOUT, Probe
from .definition import CheckDefinition, CheckFunction, Severity, is_async_callable
from .scheduler import CheckScheduler

#: The key of the ``HealthChecks`` object in the lifespan scope's ``state``.
STATE_KEY = "sidecar.health"


class HealthChecks:
    """Register the app's health checks with the sidecar.

    The sidecar puts one in the lifespan state, ``scope["state"]["sidecar.health"]``;
    ``health_checks()`` returns the same object where the lifespan state cannot be
    reached (Starlette's and FastAPI's lifespan functions). A check is a function with
    no arguments, sync or ``async def``: it fails when it raises (the exception is the
    reason; raise ``CheckFailed`` for a message without the type name), returns
    ``False`` or takes longer than ``timeout``; anything else passes.
    """

    def __init__(self, scheduler: CheckScheduler) -> None:
        self._scheduler = scheduler
        self._names: list[str] = []
        self._closed = False

    def add_readiness_check(
        self,
        name: str,
        check: CheckFunction,
        *,
        timeout: float = CHECK_TIMEOUT,
        interval: float = CHECK_INTERVAL,
        failure_threshold: int = CHECK_FAILURE_THRESHOLD,
        severity: Severity = "critical",
        tags: Iterable[str] = (),
    ) -> None:
        """Add a check to ``/readyz``: should traffic be routed here now?"""
        self._add(
            Probe.READINESS, name, check, timeout, interval, failure_threshold, severity, tags
        )

    def add_liveness_check(
        self,
        name: str,
        check: CheckFunction,
        *,
        timeout: float = CHECK_TIMEOUT,
        interval: float = CHECK_INTERVAL,
        failure_threshold: int = CHECK_FAILURE_THRESHOLD,
        severity: Severity = "critical",
        tags: Iterable[str] = (),
    ) -> None:
        """Add a check to ``/livez``: is this process stuck so that a restart helps?"""
        self._add(Probe.LIVENESS, name, check, timeout, interval, failure_threshold, severity, tags)

    def remove_check(self, name: str) -> None:
        """Stop and remove a check this object added; unknown names are ignored."""
        if name in self._names:
            self._names.remove(name)
            self._scheduler.remove(name)

    def close(self) -> None:
        """Remove every check added through this object and refuse new ones.

        The sidecar calls this when the lifespan startup attempt that registered them
        failed: its checks would probe resources that attempt never finished setting up.
        """
        self._closed = True
        for name in self._names:
            self._scheduler.remove(name)
        self._names.clear()

    def _add(
        self,
        probe: Probe,
        name: str,
        check: CheckFunction,
        timeout: float,
        interval: float,
        failure_threshold: int,
        severity: Severity,
        tags: Iterable[str],
    ) -> None:
        if self._closed:
            raise CheckRegistrationError(
                f"cannot add health check {name!r}: this startup attempt has ended"
            )
        settings = {
            "name": name,
            "timeout": timeout,
            "interval": interval,
            "failure_threshold": failure_threshold,
            "severity": severity,
            "tags": (tags,) if isinstance(tags, str) else tuple(tags),
        }
        problems: list[str] = []
        valid = check_settings(settings, problems, lambda key: key)
        function: object = check  # from the app's code: the annotation is a hope
        if not callable(function):
            problems.append(f"the check must be callable, got {type(function).__name__}")
        if problems:
            raise CheckRegistrationError(
                f"cannot add health check {name!r}: " + "; ".join(problems)
            )
        definition = CheckDefinition(
            name=valid["name"],
            probe=probe,
            run=check,
            runs_on="app-loop" if is_async_callable(check) else "thread",
            timeout=valid["timeout"],
            interval=valid["interval"],
            failure_threshold=valid["failure_threshold"],
            severity=valid["severity"],
            tags=valid["tags"],
            source="app",
        )
        self._scheduler.add(definition)
        self._names.append(name)


_current: ContextVar[HealthChecks] = ContextVar("sidecar_health_checks")


def health_checks() -> HealthChecks:
    """Return the sidecar's ``HealthChecks`` for the app's lifespan code.

    Raise ``LookupError`` when the app does not run under the sidecar (under another
    server, or in a unit test), so the app can carry on without checks.
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError(
            "no sidecar health checks here: the app is not running under `sidecar run`, "
            "or this code runs outside the app's lifespan and requests"
        ) from None


def activate(checks: HealthChecks) -> Token[HealthChecks]:
    """Make ``checks`` what ``health_checks()`` returns in this context and its tasks."""
    return _current.set(checks)
