"""Host an ASGI app for Kubernetes: lifespan, probes, preStop drain and metrics."""

from ._version import __version__
from .config import Config, load_config
from .errors import AppLoadError, BindError, ConfigError, LifespanError, SidecarError
from .runner import Sidecar, run

__all__ = [
    "AppLoadError",
    "BindError",
    "Config",
    "ConfigError",
    "LifespanError",
    "Sidecar",
    "SidecarError",
    "__version__",
    "load_config",
    "run",
]
