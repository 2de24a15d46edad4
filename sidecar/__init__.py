"""Host an ASGI app for Kubernetes: lifespan, probes, preStop drain and metrics."""

from ._version import __version__
from .config import Config, load_config
from .errors import (
    AppLoadError,
    BindError,
    CheckFailed,
    CheckRegistrationError,
    ConfigError,
    LifespanError,
    SidecarError,
)
from .health import STATE_KEY, HealthChecks, health_checks
from .runner import Sidecar, run

__all__ = [
    "STATE_KEY",
    "AppLoadError",
    "BindError",
    "CheckFailed",
    "CheckRegistrationError",
    "Config",
    "ConfigError",
    "HealthChecks",
    "LifespanError",
    "Sidecar",
    "SidecarError",
    "__version__",
    "health_checks",
    "load_config",
    "run",
]
