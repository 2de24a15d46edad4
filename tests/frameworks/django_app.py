"""Django's ASGI handler with settings configured in code: no project scaffolding.

Django does not speak the ASGI lifespan protocol: its handler raises on a ``lifespan``
scope before receiving anything, which the sidecar (``lifespan.mode: auto``) logs as
unsupported and serves without.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="framework-matrix-tests-only",
    ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    DATABASES={},
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "sidecar.integrations.django.RouteMiddleware",
    ],
    USE_TZ=True,
    LOGGING_CONFIG=None,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402  (needs configured settings)
from django.http import (  # noqa: E402
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path  # noqa: E402

from . import data_file  # noqa: E402


def index(request: HttpRequest) -> HttpResponse:
    """A sync view: Django runs it in a thread."""
    return HttpResponse("hello from django\n", content_type="text/plain; charset=utf-8")


async def info(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "method": request.method,
            "path": request.path,
            "query": request.GET.dict(),
            "scheme": request.scheme,
            "host": request.get_host(),
            "agent": request.headers.get("user-agent", ""),
        }
    )


async def echo(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    payload = json.loads(request.body or b"{}")
    response = JsonResponse({"received": payload}, status=201)
    response["X-Body-Length"] = str(len(request.body))
    return response


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    async def parts() -> AsyncIterator[bytes]:
        for index in range(3):
            yield f"chunk {index}\n".encode()

    return StreamingHttpResponse(parts(), content_type="text/plain")


async def cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("cookie set", content_type="text/plain")
    response.set_cookie("csrftoken-ish", "xyz", httponly=True, samesite="Lax")
    return response


def download(request: HttpRequest) -> FileResponse:
    return FileResponse(data_file().open("rb"), as_attachment=True, filename="report.csv")


async def item(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse({"item": pk})


urlpatterns = [
    path("", index),
    path("items/<int:pk>/", item),
    path("info/", info),
    path("echo/", echo),
    path("stream/", stream),
    path("cookie/", cookie),
    path("file/", download),
]

application = get_asgi_application()
