"""Several worker processes in one pod, behind one admin port (``server.workers`` > 1).

``supervisor`` is the composition root of this mode: it binds the app port once, serves
the admin port, and owns the shutdown order; ``pool`` starts, watches, replaces and
recycles the workers; ``probes`` and ``metrics`` answer for all of them; ``channel`` is
the control channel; ``child`` is a worker process and ``link`` its side of the channel.
"""

from .supervisor import run_supervisor

__all__ = ["run_supervisor"]
