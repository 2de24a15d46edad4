"""Logging setup: human-readable text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .config import LoggingConfig

# Attributes every LogRecord has; anything else was passed with ``extra=`` and belongs
# in the JSON object as a field of its own.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class TextFormatter(logging.Formatter):
    """The human-readable line, with a traceback passed as ``extra`` on the lines below."""

    def __init__(self, *, worker: int | None = None) -> None:
        where = "%(name)s" if worker is None else f"worker {worker} %(name)s"
        super().__init__(f"%(asctime)s %(levelname)-7s {where}: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        trace = getattr(record, "traceback", None)
        return f"{text}\n{trace}" if trace else text


class _Worker(logging.Filter):
    """Say which worker a record comes from (a ``worker`` field; in text, a prefix)."""

    def __init__(self, slot: int) -> None:
        super().__init__()
        self._slot = slot

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._slot
        return True


def configure_logging(config: LoggingConfig, *, worker: int | None = None) -> None:
    """Send the sidecar's logs to stderr in the configured format and level.

    A worker of a pod with several (``worker``, its slot) marks its records with it.
    """
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(worker=worker))
    if worker is not None:
        handler.addFilter(_Worker(worker))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # aiohttp logs each client that disconnects early at debug level and its own access
    # log at info; the sidecar has its own access log, so keep aiohttp's quiet.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
