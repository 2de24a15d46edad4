"""Litestar: startup/shutdown hooks with app state, JSON, a validated POST, streaming, WebSocket.

Handlers take the request (or socket) and a ``Body()``-annotated ``data`` rather than
inferred path/query/state parameters: recent Litestar 2.x releases deprecate the inferred
style (pytest turns the warning into an error) in favour of aliases older ones lack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Litestar, Request, WebSocket, get, post, websocket
from litestar.datastructures import Cookie
from litestar.params import Body
from litestar.response import Response, Stream


@dataclass
class Order:
    item: str
    quantity: int


def open_store(app: Litestar) -> None:
    app.state.orders = 0
    app.state.greeting = "hello from litestar"


def close_store(app: Litestar) -> None:
    print(f"litestar shutdown: {app.state.orders} order(s)", flush=True)


@get("/")
async def index(request: Request[Any, Any, Any]) -> dict[str, object]:
    return {"greeting": request.app.state.greeting, "framework": "litestar"}


@get("/items/{item_id:int}")
async def item(request: Request[Any, Any, Any]) -> dict[str, object]:
    return {"id": request.path_params["item_id"], "detail": request.query_params.get("detail")}


@post("/orders")
async def place_order(
    request: Request[Any, Any, Any], data: Annotated[Order, Body()]
) -> Response[dict[str, object]]:
    state = request.app.state
    state.orders += 1
    return Response(
        {"item": data.item, "quantity": data.quantity, "number": state.orders},
        cookies=[Cookie(key="last-order", value=data.item, httponly=True)],
        headers={"x-order-count": str(state.orders)},
    )


@get("/text", media_type="text/plain")
async def text(request: Request[Any, Any, Any]) -> str:
    return f"{request.method} {request.url.path}"


@get("/stream")
async def stream() -> Stream:
    async def parts() -> AsyncIterator[str]:
        for index in range(3):
            yield f"part {index}\n"

    return Stream(parts(), media_type="text/plain")


@websocket("/ws")
async def socket(socket: WebSocket[Any, Any, Any]) -> None:
    offered = socket.scope["subprotocols"]
    await socket.accept(subprotocols="echo.v1" if "echo.v1" in offered else None)
    greeting = socket.app.state.greeting
    while True:
        message = await socket.receive_text()
        if message == "close":
            await socket.close(code=4003, reason="done")
            return
        await socket.send_json({"echo": message, "greeting": greeting})


app = Litestar(
    route_handlers=[index, item, place_order, text, stream, socket],
    on_startup=[open_store],
    on_shutdown=[close_store],
)
