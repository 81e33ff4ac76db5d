"""GET /prices/stream (Server-Sent Events), GET / (the live page), CORS and the bearer token,
through the real hypercorn server on a loopback port (real sockets: a slow reader is a real one)."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from adapters.clock import SystemClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache
from application.price_fanout import PriceFanOut
from domain.price import Price, exact_mid
from entrypoints.http_api import HttpOptions, create_app, serve_http
from entrypoints.http_sse import encode_event
from tests.conditions import wait_for
from tests.entrypoints.test_http_api import FakeView

T0 = 1_764_600_000_000_000_000


def price(symbol: str, bid: float, ask: float, ts: int = T0) -> Price:
    return Price(symbol, bid, ask, exact_mid(bid, ask), ts, "V")


class Rig:
    def __init__(self, **fanout_args: Any) -> None:
        self.bus = InMemoryEventBus()
        self.cache = InMemoryPriceCache(SystemClock(), ttl_s=1e9)
        self.view = FakeView()
        self.fanout = PriceFanOut(
            self.bus,
            self.cache,
            encode=encode_event,
            all_symbols=lambda: ["AAPL", "MSFT"],
            **fanout_args,
        )
        self.url = ""


@asynccontextmanager
async def served(
    rig: Rig, options: HttpOptions | None = None, stuck_peer_timeout_s: float = 10
) -> AsyncIterator[str]:
    app = create_app(rig.view, fanout=rig.fanout, options=options)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.fanout.run)
        binds = await tg.start(
            partial(serve_http, stuck_peer_timeout_s=stuck_peer_timeout_s), app, "127.0.0.1", 0
        )
        rig.url = binds[0]
        yield binds[0]
        tg.cancel_scope.cancel()


async def events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """Parse an SSE stream into events ({'id':…, 'data':…} or {'comment':…}, {'retry':…})."""
    event: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


async def test_image_first_then_every_update_as_published_json() -> None:
    rig = Rig()
    await rig.cache.put_many([price("AAPL", 150.25, 150.27), price("MSFT", 400, 400.5)])
    with anyio.fail_after(10):
        async with (
            served(rig) as url,
            httpx.AsyncClient(base_url=url) as c,
            c.stream("GET", "/prices/stream?symbols=aapl,MSFT,SPY") as r,
        ):
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-store"
            got = events(r.aiter_lines())
            assert await anext(got) == {"retry": "2000"}
            image = [await anext(got), await anext(got)]
            assert {e["id"] for e in image} == {"AAPL", "MSFT"}
            for e in image:
                assert e["data"].encode() == (await rig.cache.get(e["id"])).to_json()  # type: ignore[union-attr]
            await wait_for(lambda: len(rig.bus._subscribers) == 1)
            update = price("SPY", 500, 500.02, T0 + 5)
            await rig.bus.publish_many([update, price("NVDA", 1, 2, T0 + 6)])
            event = await anext(got)
            assert event == {"id": "SPY", "data": update.to_json().decode()}


async def test_no_symbols_means_every_subscribed_symbol() -> None:
    rig = Rig()
    await rig.cache.put_many([price("AAPL", 1, 2), price("MSFT", 3, 4), price("OTHER", 5, 6)])
    with anyio.fail_after(10):
        async with (
            served(rig) as url,
            httpx.AsyncClient(base_url=url) as c,
            c.stream("GET", "/prices/stream") as r,
        ):
            got = events(r.aiter_lines())
            await anext(got)  # retry
            image = {(await anext(got))["id"], (await anext(got))["id"]}
            assert image == {"AAPL", "MSFT"}
            await wait_for(lambda: len(rig.bus._subscribers) == 1)
            await rig.bus.publish_many([price("TSLA", 7, 8, T0 + 1)])
            assert (await anext(got))["id"] == "TSLA"


async def test_a_bad_symbol_is_422() -> None:
    rig = Rig()
    with anyio.fail_after(10):
        async with served(rig) as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/prices/stream?symbols=AAPL,$$$")
            assert r.status_code == 422 and "$$$" in r.json()["detail"]


async def test_heartbeat_comment_when_nothing_happens() -> None:
    rig = Rig()
    with anyio.fail_after(10):
        async with (
            served(rig, HttpOptions(sse_heartbeat_s=0.2)) as url,
            httpx.AsyncClient(base_url=url) as c,
            c.stream("GET", "/prices/stream?symbols=AAPL") as r,
        ):
            got = events(r.aiter_lines())
            assert await anext(got) == {"retry": "2000"}
            assert await anext(got) == {"comment": "keep-alive"}


async def test_clients_over_the_cap_get_503() -> None:
    rig = Rig(max_clients=2)
    with anyio.fail_after(10):
        async with served(rig) as url, httpx.AsyncClient(base_url=url) as c:
            async with (
                c.stream("GET", "/prices/stream?symbols=A") as one,
                c.stream("GET", "/prices/stream?symbols=B") as two,
            ):
                assert one.status_code == two.status_code == 200
                third = await c.get("/prices/stream?symbols=C")
                assert third.status_code == 503
                assert third.headers["retry-after"] == "5"
            await wait_for(lambda: rig.fanout.clients == 0)
            async with c.stream("GET", "/prices/stream?symbols=C") as again:
                assert again.status_code == 200


async def test_a_client_that_stops_reading_is_dropped_and_the_rest_go_on() -> None:
    rig = Rig()
    symbols = [f"S{i}" for i in range(500)]
    with anyio.fail_after(60):
        async with (
            served(
                rig,
                HttpOptions(sse_send_timeout_s=0.5, sse_min_interval_s=0),
                stuck_peer_timeout_s=1,
            ) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as c,
            anyio.create_task_group() as tg,
        ):
            host, port = url.removeprefix("http://").split(":")
            stuck = socket.socket()
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.connect((host, int(port)))
            stuck.sendall(
                b"GET /prices/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
            )  # and never reads
            seen: list[str] = []

            async def read_healthy(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                async with c.stream("GET", "/prices/stream?symbols=S0") as healthy:
                    task_status.started()
                    async for event in events(healthy.aiter_lines()):
                        seen.append(event.get("data", ""))

            try:
                await wait_for(lambda: len(rig.bus._subscribers) == 1)
                await tg.start(read_healthy)
                ts = T0
                while rig.fanout.clients == 2:
                    ts += 1
                    await rig.bus.publish_many([price(s, 1, 2, ts) for s in symbols])
                    await anyio.sleep(0.05)  # ~10,000 prices/s; bounded by fail_after
                assert rig.fanout.stats.dropped_total == 1
                # the reading client is still there and gets the latest price
                last = price("S0", 3, 4, ts + 1)
                await rig.bus.publish_many([last])
                await wait_for(lambda: seen[-1:] == [last.to_json().decode()])
                assert rig.fanout.clients == 1
            finally:
                stuck.close()
                tg.cancel_scope.cancel()


async def test_the_page_is_self_contained_html() -> None:
    rig = Rig()
    with anyio.fail_after(10):
        async with served(rig) as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/html")
            page = r.text
            assert "prices/stream" in page and "health" in page
            # nothing from elsewhere: no absolute URL in src/href/url()/imports
            assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
            assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)
            assert "@import" not in page


async def test_the_page_greys_a_row_at_the_services_own_stale_age() -> None:
    """The page's stale age is the service's (MDS_PRICE_TTL, the age /prices calls stale), not
    a number of its own: with a 60 s TTL a 90 s old price must not look fresh."""
    rig = Rig()
    with anyio.fail_after(10):
        async with (
            served(rig, HttpOptions(stale_after_s=60)) as url,
            httpx.AsyncClient(base_url=url) as c,
        ):
            page = (await c.get("/")).text
    assert "const STALE_AFTER_S = 60;" in page
    assert "const STALE_AFTER_S = 300;" not in page


# --- CORS and the bearer token ------------------------------------------------------------------


async def test_cors_allows_only_the_configured_origins() -> None:
    rig = Rig()
    options = HttpOptions(cors_origins=("https://desk.example",))
    with anyio.fail_after(10):
        async with served(rig, options) as url, httpx.AsyncClient(base_url=url) as c:
            ok = await c.get("/health", headers={"Origin": "https://desk.example"})
            assert ok.headers["access-control-allow-origin"] == "https://desk.example"
            other = await c.get("/health", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers
            preflight = await c.options(
                "/subscriptions/sync",
                headers={
                    "Origin": "https://desk.example",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            assert preflight.status_code == 200
            assert "POST" in preflight.headers["access-control-allow-methods"]
            async with c.stream(
                "GET", "/prices/stream?symbols=AAPL", headers={"Origin": "https://desk.example"}
            ) as stream:
                assert stream.headers["access-control-allow-origin"] == "https://desk.example"


async def test_no_cors_headers_by_default() -> None:
    rig = Rig()
    with anyio.fail_after(10):
        async with served(rig) as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/health", headers={"Origin": "https://desk.example"})
            assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("protect", ["mutating", "all"])
async def test_the_token_guards_mutations_and_optionally_reads(protect: str) -> None:
    rig = Rig()
    options = HttpOptions(token="s3cret-token", protect=protect)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with served(rig, options) as url, httpx.AsyncClient(base_url=url) as c:
            bad = {"Authorization": "Bearer wrong"}
            good = {"Authorization": "Bearer s3cret-token"}
            assert (await c.post("/subscriptions/sync")).status_code == 401
            assert (await c.post("/subscriptions/sync", headers=bad)).status_code == 401
            denied = await c.post("/subscriptions/sync", headers={"Authorization": "s3cret-token"})
            assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
            assert "s3cret" not in denied.text
            assert (await c.post("/subscriptions/sync", headers=good)).status_code == 200
            assert rig.view.syncs == 1
            read = await c.get("/health")
            assert read.status_code == (401 if protect == "all" else 200)
            assert (await c.get("/health", headers=good)).status_code == 200


async def test_without_a_token_nothing_is_guarded() -> None:
    rig = Rig()
    with anyio.fail_after(10):
        async with served(rig) as url, httpx.AsyncClient(base_url=url) as c:
            assert (await c.post("/subscriptions/sync")).status_code == 200


async def test_writes_are_paced_so_many_updates_cost_few_writes() -> None:
    """All clients together write at most ``sse_writes_per_s`` times a second: one client with a
    budget of 2 gets a symbol updated every 10 ms at most about twice a second (the newest each
    time), however fast it reads."""
    rig = Rig()
    options = HttpOptions(sse_min_interval_s=0, sse_writes_per_s=2)
    received: list[str] = []
    with anyio.fail_after(30):
        async with (
            served(rig, options) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as c,
            anyio.create_task_group() as tg,
        ):

            async def read(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                async with c.stream("GET", "/prices/stream?symbols=AAPL") as r:
                    task_status.started()
                    async for event in events(r.aiter_lines()):
                        if "data" in event:
                            received.append(event["data"])

            await tg.start(read)
            await wait_for(lambda: len(rig.bus._subscribers) == 1)
            start = anyio.current_time()
            ts = T0
            while anyio.current_time() - start < 2.0:
                ts += 1
                await rig.bus.publish_many([price("AAPL", 1, 2, ts)])
                await anyio.sleep(0.01)  # an update every 10 ms; bounded by the loop
            elapsed = anyio.current_time() - start
            final = price("AAPL", 5, 6, ts + 1)
            await rig.bus.publish_many([final])
            await wait_for(lambda: received[-1:] == [final.to_json().decode()], timeout_s=5)
            tg.cancel_scope.cancel()
    # ~200 updates, written at most once per 0.5 s (+ the first write and the final one)
    assert 2 <= len(received) <= elapsed / 0.5 + 3, (len(received), elapsed)
