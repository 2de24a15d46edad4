"""Quart: before/after serving hooks, JSON, POST, cookies, WebSocket."""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, jsonify, request, websocket

app = Quart(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = False
store: dict[str, Any] = {}


@app.before_serving
async def startup() -> None:
    store["greeting"] = "hello from quart"
    store["notes"] = []


@app.after_serving
async def shutdown() -> None:
    print(f"quart after_serving: {len(store['notes'])} note(s)", flush=True)


@app.get("/")
async def index() -> Any:
    return jsonify(greeting=store["greeting"], framework="quart")


@app.post("/notes")
async def add_note() -> Any:
    payload = await request.get_json()
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        return jsonify(error="expected {'text': str}"), 400
    store["notes"].append(payload["text"])
    response = jsonify(id=len(store["notes"]), text=payload["text"])
    response.status_code = 201
    response.set_cookie("notes", str(len(store["notes"])), httponly=True)
    return response


@app.get("/plain")
async def plain() -> Response:
    return Response("plain text\n", content_type="text/plain; charset=utf-8")


@app.websocket("/ws")
async def ws() -> None:
    await websocket.accept(headers={"x-greeting": store["greeting"]})
    while True:
        message = await websocket.receive()
        if message == "close":
            await websocket.close(4004, "quart says bye")
            return
        if isinstance(message, bytes):
            await websocket.send(message[::-1])
            continue
        await websocket.send_json({"echo": message})
