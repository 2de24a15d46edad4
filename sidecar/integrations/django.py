"""Django: put the matched URL pattern in the ASGI scope, for the route label.

Django's URL resolver keeps its match on the request (``request.resolver_match``), which
the server cannot see; this middleware copies the pattern into the scope, where the
sidecar reads it for the ``route`` label of metrics and the access log. Add it to
``MIDDLEWARE`` (anywhere: it looks at the request once the view has answered)::

    MIDDLEWARE = [..., "sidecar.integrations.django.RouteMiddleware"]

It works in Django's sync and async modes without a thread switch, and under other
servers it changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction


def _copy_route(request: Any) -> None:
    scope = getattr(request, "scope", None)
    route = getattr(getattr(request, "resolver_match", None), "route", None)
    if isinstance(scope, dict) and isinstance(route, str):
        # Django's patterns have no leading slash; a regular expression keeps its ^.
        scope["route"] = route if route.startswith("^") else "/" + route


class RouteMiddleware:
    """Set ``scope["route"]`` to the URL pattern that matched (``/items/<int:pk>/``)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self._respond(request)
        response = self.get_response(request)
        _copy_route(request)
        return response

    async def _respond(self, request: Any) -> Any:
        get_response: Callable[[Any], Awaitable[Any]] = self.get_response
        response = await get_response(request)
        _copy_route(request)
        return response
