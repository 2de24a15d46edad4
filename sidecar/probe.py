"""What probes are made of: the three probes, their checks, and the rules for check names.

A leaf module: the configuration validates check names with these rules, the lifecycle
and the health checks report ``Check`` lines, and the admin port renders them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Probe(StrEnum):
    """A kubelet probe; its value names it in config keys, logs and JSON."""

    LIVENESS = "liveness"
    READINESS = "readiness"
    STARTUP = "startup"

    @property
    def endpoint(self) -> str:
        """The admin path that answers this probe, kube-apiserver style."""
        return _ENDPOINTS[self]


_ENDPOINTS = {Probe.LIVENESS: "livez", Probe.READINESS: "readyz", Probe.STARTUP: "startupz"}


class Builtin(StrEnum):
    """The checks the sidecar always reports; configured and app checks may not reuse them."""

    PING = "ping"
    STARTUP = "startup"
    DRAINING = "draining"
    LIFESPAN = "lifespan"
    EVENT_LOOP = "event-loop"


BUILTIN_CHECKS = frozenset(check.value for check in Builtin)

# Check names appear in URLs (/readyz/<check>) and as metric label values, so they are
# restricted to characters that need no escaping in either.
CHECK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
CHECK_NAME_FORM = "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"

# Defaults of a health check, configured or registered by the app. A dependency that
# needs more than a second to answer a trivial request is not serving; every 5 s is half
# the kubelet's default probe period (10 s), so each probe sees a fresh result; one failed
# run is a blip, two in a row (5-10 s) an outage.
CHECK_TIMEOUT = 1.0
CHECK_INTERVAL = 5.0
CHECK_FAILURE_THRESHOLD = 2


@dataclass(frozen=True)
class Check:
    """One named probe check, as kube-apiserver prints them under ``?verbose``.

    A check that is not ``critical`` (severity ``warning``) is reported but does not
    decide the probe's status. ``details`` go into the JSON answer.
    """

    name: str
    ok: bool
    message: str = "ok"
    critical: bool = True
    tags: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


def check_document(check: Check) -> dict[str, Any]:
    """The JSON form of a check, as the probes' JSON answers and the status page give it."""
    document: dict[str, Any] = {
        "name": check.name,
        "ok": check.ok,
        "message": check.message,
        "critical": check.critical,
    }
    if check.tags:
        document["tags"] = list(check.tags)
    if check.details:
        document["details"] = dict(check.details)
    return document


def passes(checks: Iterable[Check]) -> bool:
    """Whether a probe with these checks passes: every critical check is ok."""
    return all(check.ok or not check.critical for check in checks)


def verdicts(checks: Callable[[Probe], Iterable[Check]]) -> tuple[bool, bool]:
    """Whether ``/readyz`` and ``/livez`` pass now, given the checks of each probe."""
    return passes(checks(Probe.READINESS)), passes(checks(Probe.LIVENESS))
