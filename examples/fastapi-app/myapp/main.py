"""An existing FastAPI app, unchanged for the sidecar: ``sidecar run myapp.main:app``.

Its lifespan reads its settings the way an app opens its pools: a failure there stops the
pod from turning ready, and the sidecar exits with code 3.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

from fastapi import FastAPI, Request


class State(TypedDict):
    greeting: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    greeting = os.environ.get("MYAPP_GREETING", "hello from myapp")
    if not greeting:
        raise RuntimeError("MYAPP_GREETING is set but empty")
    yield {"greeting": greeting}


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def index(request: Request) -> dict[str, Any]:
    return {"greeting": request.state.greeting}
