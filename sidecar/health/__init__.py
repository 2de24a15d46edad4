"""Health: what the probes report beyond the lifecycle.

``loop_monitor`` measures the app's event-loop lag from the admin thread; ``scheduler``
runs health checks in the background (``runs`` is one run, ``definition`` what a check
is); ``api`` is the app's side of registering them, ``configured`` builds the ones the
configuration lists; ``probes`` puts each probe's checks together.
"""

from .api import STATE_KEY, HealthChecks, activate, health_checks
from .configured import config_check
from .loop_monitor import LoopMonitor
from .probes import Probes
from .scheduler import CheckScheduler

__all__ = [
    "STATE_KEY",
    "CheckScheduler",
    "HealthChecks",
    "LoopMonitor",
    "Probes",
    "activate",
    "config_check",
    "health_checks",
]
