"""Real framework apps with lifespan-managed state, served by ``sidecar run`` in tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


class Pool:
    """Stands in for a connection pool opened in the lifespan."""

    def __init__(self) -> None:
        self.open = True
        self.queries = 0


@contextlib.asynccontextmanager
async def starlette_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    pool = Pool()
    yield {"pool": pool, "name": "starlette"}
    pool.open = False
    print("starlette lifespan shutdown: pool closed", flush=True)


async def starlette_home(request: StarletteRequest) -> JSONResponse:
    pool: Pool = request.state.pool
    pool.queries += 1
    return JSONResponse({"name": request.state.name, "open": pool.open, "queries": pool.queries})


async def starlette_echo(request: StarletteRequest) -> PlainTextResponse:
    return PlainTextResponse(await request.body())


async def starlette_stream(request: StarletteRequest) -> StreamingResponse:
    async def parts() -> AsyncIterator[bytes]:
        for index in range(3):
            yield f"line {index}\n".encode()

    return StreamingResponse(parts(), media_type="text/plain")


starlette_app = Starlette(
    routes=[
        Route("/", starlette_home),
        Route("/echo", starlette_echo, methods=["POST"]),
        Route("/stream", starlette_stream),
    ],
    lifespan=starlette_lifespan,
)


@contextlib.asynccontextmanager
async def fastapi_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"settings": {"greeting": "hello from fastapi"}, "pool": Pool()}
    print("fastapi lifespan shutdown", flush=True)


fastapi_app = FastAPI(lifespan=fastapi_lifespan)


@fastapi_app.get("/items/{item_id}")
async def read_item(item_id: int, request: Request, q: str | None = None) -> dict[str, Any]:
    return {"item_id": item_id, "q": q, "greeting": request.state.settings["greeting"]}


@fastapi_app.post("/items")
async def create_item(item: dict[str, Any]) -> dict[str, Any]:
    return {"created": item}
