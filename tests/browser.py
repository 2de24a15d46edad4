"""Headless Chromium driven over the DevTools protocol, for tests of pages in a real browser.

The browser listens on a DevTools websocket (``--remote-debugging-port=0``: it picks a
free port and prints the address); aiohttp's client speaks to it from a thread of its own
with its own event loop, and the test calls plain methods. Every page records what the
browser reports while it lives: each request it sent (``Network.requestWillBeSent``),
console and log messages, and Content-Security-Policy issues. Every wait is bounded by
``WAIT``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from .conftest import WAIT

T = TypeVar("T")

# Flags that keep a headless Chromium to itself: no GPU, no sandbox (tests run as root),
# nothing fetched on its own (updates, sync, field trials), a fresh profile per browser.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class DevToolsError(Exception):
    """The browser answered a command with an error, or a page script threw."""


@dataclass
class Page:
    """One browser tab: what it requested and logged, and commands on its session."""

    browser: Chromium
    target: str
    session: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)
    _loaded: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, method: str, **params: Any) -> Any:
        return self.browser.run(self.browser.command(method, params, session=self.session))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            request = params["request"]
            self.requests.append({"url": request["url"], "type": params.get("type", "")})
        elif method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Log.entryAdded":
            self.messages.append(params["entry"])
        elif method == "Runtime.consoleAPICalled":
            args = params["args"]
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in args)
            self.messages.append({"source": "console", "level": params["type"], "text": text})
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.messages.append({"source": "exception", "level": "error", "text": str(details)})
        elif method == "Audits.issueAdded":
            self.issues.append(params["issue"])

    def navigate(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""

        async def go() -> None:
            self._loaded.clear()
            answer = await self.browser.command("Page.navigate", {"url": url}, self.session)
            if answer.get("errorText"):
                raise DevToolsError(f"cannot load {url}: {answer['errorText']}")
            await asyncio.wait_for(self._loaded.wait(), WAIT)

        self.browser.run(go())

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        answer = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise DevToolsError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, condition: str, timeout: float = WAIT) -> Any:
        """Wait until the JavaScript ``condition`` is truthy; return its value.

        The page looks again on every change to its DOM (a MutationObserver), so nothing
        polls; it needs the page's scripts to run.
        """
        return self.evaluate(
            f"""new Promise((resolve, reject) => {{
              const look = () => {{
                const value = ({condition});
                if (value) {{ observer.disconnect(); clearTimeout(timer); resolve(value); }}
              }};
              const observer = new MutationObserver(look);
              const timer = setTimeout(() => {{
                observer.disconnect();
                reject(new Error("not true within {timeout}s: " + {json.dumps(condition)}));
              }}, {timeout * 1000});
              observer.observe(document, {{subtree: true, childList: true,
                                          characterData: true, attributes: true}});
              look();
            }})"""
        )

    def screenshot(self, path: Path) -> tuple[int, int]:
        """Save a PNG of the whole page (not just the viewport); return its size in pixels."""
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        width, height = int(size["width"]), int(size["height"])
        shot = self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return width, height

    def close(self) -> None:
        self.browser.run(self.browser.command("Target.closeTarget", {"targetId": self.target}))


class Chromium:
    """A headless Chromium process and one DevTools connection to it."""

    def __init__(self, executable: str) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="sidecar-chromium-")
        self._process = subprocess.Popen(
            [
                executable,
                *FLAGS,
                f"--user-data-dir={self._profile.name}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self._reader.start()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._pages: dict[str, Page] = {}
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._receiver: asyncio.Task[None] | None = None
        try:
            self.run(self._connect(self._address(lines)))
        except BaseException:
            self.close()
            raise

    def _read(self, lines: queue.Queue[str | None]) -> None:
        stream = self._process.stderr
        assert stream is not None
        for line in stream:
            self.log.append(line.rstrip("\n"))
            lines.put(line)
        lines.put(None)

    def _address(self, lines: queue.Queue[str | None]) -> str:
        while True:
            try:
                line = lines.get(timeout=WAIT)
            except queue.Empty:
                log = self.logged()
                raise DevToolsError("chromium printed no DevTools address:\n" + log) from None
            if line is None:
                raise DevToolsError("chromium exited at start:\n" + self.logged())
            match = _LISTENING.search(line)
            if match:
                return match.group(1)

    def logged(self) -> str:
        return "\n".join(self.log)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the DevTools thread and return its result (bounded by WAIT)."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(WAIT)

    async def _connect(self, address: str) -> None:
        self._session = aiohttp.ClientSession()
        # Screenshots arrive as one message of a few megabytes.
        self._socket = await self._session.ws_connect(address, max_msg_size=0)
        self._receiver = asyncio.create_task(self._receive(self._socket))

    async def _receive(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        async for message in socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                waiter = self._pending.pop(data["id"], None)
                if waiter is None or waiter.done():
                    continue
                if "error" in data:
                    waiter.set_exception(DevToolsError(str(data["error"])))
                else:
                    waiter.set_result(data.get("result", {}))
            elif (page := self._pages.get(data.get("sessionId", ""))) is not None:
                page._event(data["method"], data.get("params", {}))
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(DevToolsError("the DevTools connection closed"))

    async def command(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        """Send one DevTools command and wait for its answer."""
        socket = self._socket
        if socket is None:
            raise DevToolsError("not connected")
        ident = next(self._ids)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = waiter
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await socket.send_str(json.dumps(message))
        return await asyncio.wait_for(waiter, WAIT)

    def new_page(
        self,
        *,
        width: int = 1200,
        height: int = 900,
        mobile: bool = False,
        scripts: bool = True,
        dark: bool = False,
    ) -> Page:
        """Open a tab with this viewport, recording its requests and messages."""

        async def open_tab() -> Page:
            target = (await self.command("Target.createTarget", {"url": "about:blank"}))["targetId"]
            attached = await self.command(
                "Target.attachToTarget", {"targetId": target, "flatten": True}
            )
            page = Page(self, target, attached["sessionId"])
            self._pages[page.session] = page
            for domain in ("Page", "Network", "Log", "Runtime", "Audits"):
                await self.command(f"{domain}.enable", {}, page.session)
            await self.command(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
                page.session,
            )
            if not scripts:
                await self.command(
                    "Emulation.setScriptExecutionDisabled", {"value": True}, page.session
                )
            scheme = {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}
            await self.command("Emulation.setEmulatedMedia", {"features": [scheme]}, page.session)
            return page

        return self.run(open_tab())

    def close(self) -> None:
        """Close the connection, then the browser (killed if it does not exit)."""

        async def disconnect() -> None:
            with contextlib.suppress(Exception):
                if self._socket is not None:
                    await asyncio.wait_for(self.command("Browser.close"), 5)
            if self._socket is not None:
                await self._socket.close()
            if self._receiver is not None:
                self._receiver.cancel()
                await asyncio.gather(self._receiver, return_exceptions=True)
            if self._session is not None:
                await self._session.close()

        with contextlib.suppress(Exception):
            self.run(disconnect())
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()
        self._reader.join(WAIT)
        if self._process.stderr is not None:
            self._process.stderr.close()
        self._profile.cleanup()
