"""Headless Chromium driven over the DevTools protocol (a WebSocket, through trio-websocket):
enough to load a page, evaluate JavaScript in it and take a screenshot. No extra dependency."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from trio_websocket import WebSocketConnection, open_websocket_url

from tests.conditions import wait_for


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    return None


class Page:
    """One browser tab: ``evaluate`` JavaScript (returns the JSON value), ``screenshot``."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_message(json.dumps({"id": call_id, "method": method, "params": params}))
        with anyio.fail_after(20):
            while True:
                message = json.loads(await self._ws.get_message())
                if message.get("id") == call_id:  # events (no id) are skipped
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message.get("result", {})
                    return result

    async def goto(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        await anyio.Path(path).write_bytes(base64.b64decode(shot["data"]))


def _start(binary: str, profile: Path, width: int, height: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",  # tests run as root in CI
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            f"--window-size={width},{height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@asynccontextmanager
async def chromium_page(
    binary: str, profile: Path, width: int = 1280, height: int = 720
) -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab, for the block's duration (then killed)."""
    proc = _start(binary, profile, width, height)
    try:
        port_file = profile / "DevToolsActivePort"
        await wait_for(lambda: port_file.is_file() and port_file.read_text().strip() != "", 30)
        port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            targets: list[dict[str, Any]] = []

            async def have_page() -> bool:
                nonlocal targets
                targets = (await http.get("/json/list")).json()
                return any(t["type"] == "page" for t in targets)

            await wait_for(have_page, 30, step_s=0.1)
        page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with open_websocket_url(page_url, max_message_size=64 * 1024 * 1024) as ws:
            yield Page(ws)
    finally:
        proc.kill()
        proc.wait()
