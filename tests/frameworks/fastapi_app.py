"""FastAPI: dependencies on lifespan state, validation, forms, background tasks, WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    BackgroundTasks,
    Depends,
    FastAPI,
    Form,
    HTTPException,
    Request,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.requests import HTTPConnection
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field


@dataclass(frozen=True)
class Settings:
    greeting: str


@dataclass
class Jobs:
    """Background jobs that wait for a release the test sends over HTTP.

    A job cannot finish before its gate opens, so a response that arrived while the gate
    was closed proves the server sent it before the background task ended.
    """

    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    finished: dict[str, asyncio.Event] = field(default_factory=dict)

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def done(self, name: str) -> asyncio.Event:
        return self.finished.setdefault(name, asyncio.Event())

    def state(self, name: str) -> str:
        if name not in self.gates:
            return "unknown"
        return "done" if self.done(name).is_set() else "waiting"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"settings": Settings(greeting="hello from fastapi"), "jobs": Jobs()}
    print("fastapi lifespan shutdown", flush=True)


def get_settings(connection: HTTPConnection) -> Settings:
    settings: Settings = connection.state.settings
    return settings


def get_jobs(request: Request) -> Jobs:
    jobs: Jobs = request.state.jobs
    return jobs


SettingsDep = Annotated[Settings, Depends(get_settings)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    tags: list[str] = []


app = FastAPI(lifespan=lifespan)


@app.get("/greeting")
async def greeting(settings: SettingsDep, name: str = "world") -> dict[str, str]:
    return {"message": f"{settings.greeting}, {name}"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, settings: SettingsDep, q: str | None = None) -> dict[str, Any]:
    return {"item_id": item_id, "q": q, "greeting": settings.greeting}


@app.post("/items", status_code=201)
async def create_item(item: Item) -> dict[str, Any]:
    return {"created": item.model_dump()}


@app.post("/upload")
async def upload(title: Annotated[str, Form()], file: UploadFile) -> dict[str, Any]:
    data = await file.read()
    return {
        "title": title,
        "filename": file.filename,
        "content_type": file.content_type,
        "size": len(data),
    }


@app.get("/teapot", response_class=PlainTextResponse)
async def teapot() -> str:
    raise HTTPException(status_code=418, detail="short and stout", headers={"x-kind": "teapot"})


@app.get("/crash")
async def crash() -> None:
    raise RuntimeError("the handler crashed")


async def run_job(jobs: Jobs, name: str) -> None:
    await jobs.gate(name).wait()
    jobs.done(name).set()


@app.post("/jobs/{name}", status_code=202)
async def start_job(name: str, jobs: JobsDep, tasks: BackgroundTasks) -> dict[str, str]:
    jobs.gate(name)
    tasks.add_task(run_job, jobs, name)
    return {"queued": name, "state": jobs.state(name)}


@app.get("/jobs/{name}")
async def job_state(name: str, jobs: JobsDep) -> dict[str, str]:
    return {"name": name, "state": jobs.state(name)}


@app.post("/jobs/{name}/release")
async def release_job(name: str, jobs: JobsDep) -> dict[str, str]:
    jobs.gate(name).set()
    return {"released": name}


@app.get("/jobs/{name}/wait")
async def wait_job(name: str, jobs: JobsDep) -> dict[str, str]:
    await jobs.done(name).wait()
    return {"name": name, "state": jobs.state(name)}


@app.websocket("/ws/{room}")
async def room(websocket: WebSocket, room: str, settings: SettingsDep) -> None:
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_json()
            if data.get("action") == "leave":
                await websocket.close(code=4002, reason=f"left {room}")
                return
            await websocket.send_json({"room": room, "greeting": settings.greeting, "got": data})
    except WebSocketDisconnect:
        return


# A router with a prefix: its routes' paths carry the prefix (the route label shows it).
orders = APIRouter(prefix="/v1")


@orders.get("/orders/{order_id}")
async def read_order(order_id: int) -> dict[str, int]:
    return {"order": order_id}


app.include_router(orders)
