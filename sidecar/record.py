"""What a pod remembers across container restarts: its startup attempts and failures.

A process whose startup fails exits (code 3) a few milliseconds later, long before any
scrape; after the kubelet restarts it, in-memory counters would start from zero again,
and a crash loop would never show in Prometheus. So the counts live in a small JSON file
in ``lifespan.state_dir`` (an emptyDir: it lasts as long as the pod) and every process
reports the pod's whole history. The file is rewritten atomically after each change.

Nothing here may stop the sidecar: a missing, unreadable or corrupt file, or a directory
that cannot be written, is a warning, and the counts carry on in memory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("sidecar")

FILE_NAME = "startup.json"
_VERSION = 1
# A message is for a person reading /startupz or the status page: the first lines do.
_MESSAGE_LIMIT = 2000


@dataclass(frozen=True)
class Failure:
    """The last startup failure: why, what was said, and when (Unix time)."""

    reason: str
    message: str
    time: float


class StartupRecord(Collector):
    """Startup attempts and failures of this pod, kept in ``state_dir`` when given.

    Also the collector of ``sidecar_lifespan_startup_attempts_total``,
    ``sidecar_lifespan_startup_failures_total{reason}`` and the last failure's time.
    """

    def __init__(self, state_dir: str, reasons: Iterable[str]) -> None:
        self._path = Path(state_dir) / FILE_NAME if state_dir else None
        self._lock = threading.Lock()
        self._created = time.time()
        self._attempts = 0
        self._failures = dict.fromkeys(reasons, 0)
        self._last: Failure | None = None
        if self._path is not None:
            self._load(self._path)

    # -- reading and writing the file -------------------------------------------------

    def _load(self, path: Path) -> None:
        if not path.parent.is_dir():
            logger.warning(
                "lifespan.state_dir %r is not a directory; startup failures are counted "
                "for this process only",
                str(path.parent),
            )
            self._path = None
            return
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return  # the pod's first start
        except OSError as exc:
            logger.warning("cannot read %s (%s); counting startups from zero", path, exc)
            return
        try:
            self._adopt(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("ignoring %s, which is not a startup record (%s)", path, exc)

    def _adopt(self, document: Any) -> None:
        if not isinstance(document, dict) or document.get("version") != _VERSION:
            raise ValueError("unknown format")
        attempts, failures = document["attempts"], document["failures"]
        if not isinstance(attempts, int) or attempts < 0 or not isinstance(failures, dict):
            raise ValueError("bad counts")
        counts = {str(k): v for k, v in failures.items() if isinstance(v, int) and v >= 0}
        last = document.get("last_failure")
        failure = None
        if last is not None:
            failure = Failure(str(last["reason"]), str(last["message"]), float(last["time"]))
        self._created = float(document.get("created", self._created))
        self._attempts = attempts
        for reason, count in counts.items():
            self._failures[reason] = count
        self._last = failure

    def _save(self) -> None:
        """Write the record atomically (call with the lock held)."""
        path = self._path
        if path is None:
            return
        last = self._last
        document: dict[str, Any] = {
            "version": _VERSION,
            "created": self._created,
            "attempts": self._attempts,
            "failures": self._failures,
            "last_failure": None
            if last is None
            else {"reason": last.reason, "message": last.message, "time": last.time},
        }
        try:
            with tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", dir=path.parent, prefix=".startup-", delete=False
            ) as file:
                json.dump(document, file)
            os.replace(file.name, path)
        except OSError as exc:
            logger.warning("cannot write %s (%s); the count is kept in memory", path, exc)

    # -- recording --------------------------------------------------------------------

    def attempt(self) -> None:
        """Count a lifespan startup attempt (or an import of the app)."""
        with self._lock:
            self._attempts += 1
            self._save()

    def failure(self, reason: str, message: str) -> None:
        """Count a failed startup and remember it as the last one."""
        with self._lock:
            self._failures[reason] = self._failures.get(reason, 0) + 1
            self._last = Failure(reason, message[:_MESSAGE_LIMIT], time.time())
            self._save()

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._attempts

    @property
    def failures(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._failures)

    @property
    def last_failure(self) -> Failure | None:
        with self._lock:
            return self._last

    # -- metrics ----------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            attempts, failures, last = self._attempts, dict(self._failures), self._last
        attempted = CounterMetricFamily(
            "sidecar_lifespan_startup_attempts",
            "Lifespan startup attempts of this pod (across container restarts with "
            "lifespan.state_dir).",
        )
        attempted.add_metric([], attempts)
        yield attempted
        failed = CounterMetricFamily(
            "sidecar_lifespan_startup_failures",
            "Lifespan startup attempts that failed, by reason (across container restarts "
            "with lifespan.state_dir).",
            labels=["reason"],
        )
        for reason, count in sorted(failures.items()):
            failed.add_metric([reason], count)
        yield failed
        when = GaugeMetricFamily(
            "sidecar_lifespan_last_startup_failure_timestamp_seconds",
            "When the last startup failure happened (Unix time), labelled with its reason.",
            labels=["reason"],
        )
        if last is not None:
            when.add_metric([last.reason], last.time)
        yield when
