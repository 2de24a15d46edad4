"""The FastAPI scenario: a JSON endpoint that reads what lifespan startup stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"greeting": "Hello, world!"}


app = FastAPI(lifespan=lifespan)


@app.get("/json")
async def greeting(request: Request) -> dict[str, str]:
    return {"message": request.state.greeting}
