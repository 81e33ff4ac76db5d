"""The live page (GET /) in a real browser: headless Chromium loads it from the service running
as a real process against the local Alpaca-compatible server, and the test reads what the page
shows: prices appear and change, and a stopped feed shows as disconnected.

``pytest tests/browser --screenshot page.png`` keeps a screenshot for a reviewer."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from adapters.alpaca_compatible_server.config import ServerConfig
from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer
from entrypoints.testbed.helpers import alpaca_server, service_process
from tests.browser.chromium import chromium_binary, chromium_page
from tests.conditions import wait_for

ROWS = "[...document.querySelectorAll('#rows tr')].map(r => r.dataset.symbol)"
MIDS = "Object.fromEntries([...document.querySelectorAll('#rows tr')].map(r => [r.dataset.symbol, r.querySelector('td.mid').textContent]))"  # noqa: E501
STRIP = "({feed: document.getElementById('feed').textContent, state: document.body.dataset.feed, banner: getComputedStyle(document.getElementById('banner')).display, bannerText: document.getElementById('banner').textContent, qps: document.getElementById('qps').textContent})"  # noqa: E501


@pytest.fixture
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        message = "chromium not found: apt-get install chromium (scripts/test.sh does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


async def test_prices_appear_change_and_a_stopped_feed_shows(
    tmp_path: Path, chromium: str, request: pytest.FixtureRequest
) -> None:
    screenshot = request.config.getoption("--screenshot")
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            feed_scope = anyio.CancelScope()
            server_ready = anyio.Event()
            holder: list[AlpacaCompatibleServer] = []

            async def run_server() -> None:
                with feed_scope:
                    async with alpaca_server(ServerConfig(rate=40.0, batch=2)) as server:
                        holder.append(server)
                        server_ready.set()
                        await anyio.sleep_forever()

            tg.start_soon(run_server)
            await server_ready.wait()
            server = holder[0]
            async with (
                service_process(
                    tmp_path,
                    server,
                    None,
                    MDS_SYMBOLS="AAPL,MSFT,SPY",
                ) as service,
                chromium_page(chromium, tmp_path / "profile") as page,
            ):
                await service.wait_health(lambda h: h["websocket_connected"] is True, 30)
                await page.goto(service.http + "/")

                async def rows() -> list[str]:
                    return list(await page.evaluate(ROWS) or [])

                async def all_rows() -> bool:
                    return sorted(await rows()) == ["AAPL", "MSFT", "SPY"]

                await wait_for(all_rows, 30, step_s=0.1)
                first = await page.evaluate(MIDS)
                assert all(float(v) > 0 for v in first.values()), first

                async def changed() -> bool:
                    now = await page.evaluate(MIDS)
                    return all(now[s] != first[s] for s in first)

                await wait_for(changed, 30, step_s=0.1)

                async def strip_live() -> bool:
                    strip = await page.evaluate(STRIP)
                    return bool(strip["state"] == "connected" and strip["banner"] == "none")

                await wait_for(strip_live, 10, step_s=0.1)
                await wait_for(lambda: _qps_shown(page), 10, step_s=0.2)
                if screenshot:
                    await page.screenshot(Path(screenshot))

                feed_scope.cancel()  # the venue goes away

                async def shows_disconnected() -> bool:
                    strip = await page.evaluate(STRIP)
                    return bool(strip["state"] == "disconnected" and strip["banner"] == "block")

                await wait_for(shows_disconnected, 30, step_s=0.1)
                strip = await page.evaluate(STRIP)
                assert "Feed disconnected" in strip["bannerText"]
                assert strip["feed"] != "connected"
                if screenshot:
                    await page.screenshot(Path(screenshot).with_suffix(".disconnected.png"))
            tg.cancel_scope.cancel()


async def _qps_shown(page: object) -> bool:
    strip = await page.evaluate(STRIP)  # type: ignore[attr-defined]
    return str(strip["qps"]).isdigit() and int(strip["qps"]) > 0
