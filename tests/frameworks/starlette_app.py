"""Starlette: routing, streaming, files, cookies, a WebSocket endpoint, lifespan state."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from . import DATA_DIR_ENV, data_file


class Pool:
    """Stands in for a connection pool opened in the lifespan."""

    def __init__(self) -> None:
        self.open = True
        self.queries = 0


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    pool = Pool()
    yield {"pool": pool, "name": "starlette"}
    pool.open = False
    print("starlette lifespan shutdown: pool closed", flush=True)


async def home(request: Request) -> JSONResponse:
    pool: Pool = request.state.pool
    pool.queries += 1
    return JSONResponse({"name": request.state.name, "open": pool.open, "queries": pool.queries})


async def user(request: Request) -> JSONResponse:
    user_id: int = request.path_params["user_id"]
    return JSONResponse({"id": user_id, "type": type(user_id).__name__})


async def user_by_name(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"user {request.path_params['name']}")


async def echo(request: Request) -> Response:
    body = await request.body()
    media_type = request.headers.get("content-type", "application/octet-stream")
    return Response(body, media_type=media_type)


async def query(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "path": request.url.path,
            "query": sorted(request.query_params.multi_items()),
            "raw_path": request.scope["raw_path"].decode(),
        }
    )


async def stream(request: Request) -> StreamingResponse:
    async def parts() -> AsyncIterator[bytes]:
        for index in range(3):
            yield f"line {index}\n".encode()

    return StreamingResponse(parts(), media_type="text/plain", headers={"x-parts": "3"})


async def download(request: Request) -> FileResponse:
    return FileResponse(data_file(), media_type="text/csv", filename="report.csv")


async def cookies(request: Request) -> PlainTextResponse:
    response = PlainTextResponse("cookies set")
    response.set_cookie("session", "abc123", httponly=True, samesite="strict", path="/")
    response.set_cookie("theme", "dark", max_age=3600)
    return response


async def moved(request: Request) -> RedirectResponse:
    return RedirectResponse("/users/1", status_code=308)


async def empty(request: Request) -> Response:
    return Response(status_code=204)


class Chat(WebSocketEndpoint):
    encoding = "text"

    async def on_connect(self, websocket: WebSocket) -> None:
        offered = websocket.scope["subprotocols"]
        await websocket.accept(
            subprotocol="chat.v1" if "chat.v1" in offered else None,
            headers=[(b"x-room", b"lobby")],
        )
        await websocket.send_json({"hello": websocket.state.name})

    async def on_receive(self, websocket: WebSocket, data: str) -> None:
        if data == "bye":
            await websocket.close(code=4001, reason="bye to you")
            return
        await websocket.send_text(f"echo: {data}")


async def raw_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    data = await websocket.receive_bytes()
    await websocket.send_bytes(data[::-1])
    await websocket.close()


app = Starlette(
    routes=[
        Route("/", home),
        Route("/users/{user_id:int}", user),
        Route("/users/{name:str}", user_by_name),
        Route("/echo", echo, methods=["POST", "PUT"]),
        Route("/query/{rest:path}", query),
        Route("/stream", stream),
        Route("/file", download),
        Route("/cookies", cookies),
        Route("/moved", moved),
        Route("/empty", empty, methods=["DELETE"]),
        Mount("/api", routes=[Route("/users/{user_id:int}", user)]),
        # StaticFiles answers conditional requests (304) where FileResponse does not.
        Mount("/static", StaticFiles(directory=os.environ.get(DATA_DIR_ENV, "."), check_dir=False)),
        WebSocketRoute("/ws", Chat),
        WebSocketRoute("/ws/raw", raw_socket),
    ],
    lifespan=lifespan,
)
