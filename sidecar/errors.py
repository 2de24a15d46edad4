"""Typed errors raised by the library; the CLI maps them to exit codes in one place."""

from __future__ import annotations

from collections.abc import Sequence


class SidecarError(Exception):
    """Base class of every error the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """The configuration is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class AppLoadError(SidecarError):
    """The target ASGI app could not be imported or built.

    ``kind`` tells the causes apart: ``not_found`` (no such module),
    ``import_failed`` (the module raised while importing), ``attribute``,
    ``not_callable``, ``factory`` and ``target`` (malformed ``module:attr``).
    ``trace`` is the traceback of the app's code that raised, when it raised.
    """

    def __init__(self, kind: str, message: str, *, trace: str = "") -> None:
        self.kind = kind
        self.trace = trace
        super().__init__(message)


class LifespanError(SidecarError):
    """The app's lifespan failed at ``stage`` (startup|shutdown) for ``reason``.

    Reasons: ``failed`` (the app sent ``*.failed`` or gave up without answering),
    ``exception`` (the app raised), ``timeout`` (no answer in time).
    """

    def __init__(self, stage: str, reason: str, message: str) -> None:
        self.stage = stage
        self.reason = reason
        super().__init__(message)


class UnexpectedMessageError(SidecarError):
    """The app sent an ASGI message that is out of order or of an unknown type."""

    def __init__(self, received: object, expected: Sequence[str]) -> None:
        self.received = received
        self.expected = tuple(expected)
        super().__init__(
            f"unexpected ASGI message {received!r}; expected one of: {', '.join(self.expected)}"
        )


class ClientDisconnected(OSError):
    """Raised by ``send()`` (to the app) when the client has closed the connection.

    An ``OSError``, as the HTTP spec 2.4 says (``serving.scope.ASGI_VERSION``): it is what lets
    Starlette stream without a second task listening for ``http.disconnect``.
    """


class BindError(SidecarError):
    """A listening socket could not be opened (port in use, permission, bad address)."""


class CheckRegistrationError(SidecarError, ValueError):
    """A health check cannot be registered: bad name, duplicate, or invalid settings."""


class CheckFailed(SidecarError):
    """Raise from a health check to fail it with exactly this message (no type name)."""
