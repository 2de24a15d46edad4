"""What the access log and the request metrics know about a finished request.

Sans-IO helpers: the request id (``x-request-id``), the W3C trace id (``traceparent``),
the route template the app's router put in the scope, and the access log record with
its fields (the keys of ``config.ACCESS_LOG_FIELDS``).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from ..config import ACCESS_LOG_FIELDS

REQUEST_ID_HEADER = b"x-request-id"
#: The route label of a request no route of the app took (or an app without routes).
UNMATCHED = "unmatched"

# A request id from the client is logged and returned as it came: visible ASCII only (no
# spaces, quotes are fine in JSON), and short, so a client cannot flood the log line.
_SANE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex. Version ff is
# invalid; a later version may append fields after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16

_REASONS = {status.value: status.phrase for status in HTTPStatus}


def request_id(sent: str | None) -> tuple[str, bool]:
    """The request's id, and whether it was generated (the client sent none, or a bad one)."""
    if sent is not None and _SANE_REQUEST_ID.fullmatch(sent):
        return sent, False
    return uuid.uuid4().hex, True


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C ``traceparent`` header, else None."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace, parent, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace == _ZERO_TRACE:
        return None
    if parent == _ZERO_PARENT:
        return None
    return trace


def route_of(scope: Mapping[str, Any] | None, root_path: str = "") -> str:
    """The route template the app's router chose for ``scope``, or ``UNMATCHED``.

    Read once the response is complete, when the router has put it in the scope:
    Starlette and FastAPI set ``scope["route"]`` (a route with a ``path``), Litestar
    ``scope["path_template"]``; any app may set ``scope["route"]`` to a string (the
    Django middleware ``sidecar.integrations.django.RouteMiddleware`` does). Below a
    Starlette ``Mount`` the route's path is relative to the mount, whose matched prefix
    is what the mount added to ``root_path``.
    """
    if scope is None:
        return UNMATCHED
    route = scope.get("route")
    if route is None:
        template = scope.get("path_template")
        return template if isinstance(template, str) and template else UNMATCHED
    if isinstance(route, str):
        return route or UNMATCHED
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    mounted = scope.get("root_path", root_path)
    if mounted == root_path or not isinstance(mounted, str):
        return path
    prefix = mounted[len(root_path) :] if mounted.startswith(root_path) else mounted
    if hasattr(route, "routes"):
        # The mount itself took the request (static files, an app without routes).
        return prefix or path
    return prefix + path


def client_text(client: Any) -> str:
    """``host:port`` of an ASGI client (``-`` when unknown, as on a Unix socket)."""
    if isinstance(client, list | tuple) and len(client) == 2:
        host, port = client
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "-"


def access_record(
    *,
    method: str,
    target: str,
    version: str,
    headers: Any,
    scope: Mapping[str, Any] | None,
    client: Any,
    status: int,
    seconds: float,
    sent: int,
    request_id: str | None,
    root_path: str = "",
) -> dict[str, Any]:
    """The fields of one access log line (``ACCESS_LOG_FIELDS`` and the text-only ones).

    ``target`` is the request target as the client sent it; ``headers`` the request's
    headers (a case-insensitive mapping of strings).
    """
    path, _, query = target.partition("?")
    return {
        "method": method,
        "path": path,
        "route": route_of(scope, root_path),
        "query": query,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "bytes": sent,
        "client": client_text(scope.get("client") if scope is not None else client),
        "user_agent": headers.get("User-Agent"),
        "request_id": request_id,
        "trace_id": trace_id(headers.get("traceparent")),
        "request_line": f"{method} {target} HTTP/{version}",
        "reason": _REASONS.get(status, ""),
        "http_version": version,
    }


class AccessLog:
    """Write access log lines: the configured text line, and the fields as ``extra``.

    The JSON formatter makes every field a top-level key; the text formatter prints the
    line alone.
    """

    def __init__(self, logger: logging.Logger, line_format: str) -> None:
        self._logger = logger
        self._format = line_format

    def write(self, record: dict[str, Any]) -> None:
        # In the text line an unknown value is "-", as in uvicorn's and common log lines.
        line = self._format % {
            key: "-" if value is None else value for key, value in record.items()
        }
        fields = {key: record[key] for key in _JSON_FIELDS}
        self._logger.info("%s", line, extra=fields)


# The fields a JSON access log line carries (the text-only ones are in the message).
_JSON_FIELDS = tuple(ACCESS_LOG_FIELDS)
