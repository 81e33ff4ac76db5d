"""Building blocks of the fault suite and the chaos soak (``tests/fault/helpers.py`` re-exports
them): the in-process Alpaca-compatible server, the service as
a real process, a Redis subscriber that keeps the newest price per symbol, a tiny positions
gateway (the condition waits are in tests/conditions.py). Everything here stops what it starts
when its block exits."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import orjson
import trio

from adapters.alpaca_compatible_server.config import ServerConfig
from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer
from adapters.redis.reader import PriceReader, SubscriptionGap
from domain.price import Price
from entrypoints.testbed.service_process import ServiceProcess, start_service


@asynccontextmanager
async def alpaca_server(config: ServerConfig) -> AsyncIterator[AlpacaCompatibleServer]:
    """The Alpaca-compatible server on a free loopback port for the block's duration."""
    server = AlpacaCompatibleServer(config)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def service_process(
    tmp_path: Path, server: AlpacaCompatibleServer, redis_url: str | None, **env: str
) -> AsyncIterator[ServiceProcess]:
    """The service as a real process streaming from ``server``; killed when the block exits
    (a no-op if the test already stopped it)."""
    service = start_service(tmp_path, f"{server.url}/v2/iex", redis_url, **env)
    try:
        yield service
    except BaseException:
        # Shown by pytest with the failure: what the service was doing.
        print(f"--- {service.log_path} (tail) ---\n{service.log()[-6000:]}\n{server.stats}")
        raise
    finally:
        service.kill()


def authenticated_sessions(server: AlpacaCompatibleServer) -> int:
    return sum(1 for s in server.sessions.values() if s.authenticated)


def quotes_of_active_session(server: AlpacaCompatibleServer) -> frozenset[str]:
    """The quote symbols of the (single) authenticated session, or empty."""
    for session in server.sessions.values():
        if session.authenticated:
            return session.subscriptions["quotes"]
    return frozenset()


@dataclass
class NewestPrices:
    """What a Redis subscriber saw: the newest price per symbol and how many in all."""

    newest: dict[str, Price] = field(default_factory=dict)
    received: int = 0

    def add(self, price: Price) -> None:
        self.received += 1
        current = self.newest.get(price.symbol)
        if current is None or price.ts_event_ns >= current.ts_event_ns:
            self.newest[price.symbol] = price

    def all_newer_than(self, symbols: Collection[str], ts_ns: int) -> bool:
        return all(s in self.newest and self.newest[s].ts_event_ns > ts_ns for s in symbols)


async def subscribe_prices(
    reader: PriceReader,
    symbols: Collection[str],
    into: NewestPrices,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Subscribe to ``price.updated.{symbol}`` (confirmed before ``started``) and record every
    price into ``into`` until cancelled."""
    async with reader.subscribe(symbols) as updates:
        task_status.started()
        while True:
            try:
                async for price in updates:
                    into.add(price)
                return
            except SubscriptionGap:
                # One cluster shard re-subscribed: what is recorded is what was delivered, so
                # the cache is not re-read here; the subscription goes on.
                continue


async def cached_timestamps(reader: PriceReader, symbols: Collection[str]) -> dict[str, int]:
    """``ts_event_ns`` of each cached ``price:{symbol}``; 0 for a missing one or when Redis is
    unreachable."""
    try:
        cached = await reader.get_many(symbols)
    except ConnectionError:
        return dict.fromkeys(symbols, 0)
    return {s: cached[s].price.ts_event_ns if s in cached else 0 for s in symbols}


def wall_ns() -> int:
    return time.time_ns()


# --- a positions gateway ---------------------------------------------------------------------


class PositionsGateway:
    """A minimal HTTP/1.1 server answering every request with ``status`` and ``body`` (JSON),
    ``Connection: close``. :meth:`up` starts it in a task group, :meth:`down` closes the
    listening socket (connections are then refused) and it can come back on the same port."""

    def __init__(self, symbols: Collection[str]) -> None:
        self.status = 200
        self.body = b""
        self.set_positions(symbols)
        self.port = 0
        self.requests = 0
        self._scope: trio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/positions"

    def set_positions(self, symbols: Collection[str]) -> None:
        positions = [{"symbol": s, "qty": "5"} for s in sorted(symbols)]
        self.body = orjson.dumps({"positions": positions})

    async def up(self, tg: anyio.abc.TaskGroup) -> None:
        """Listen (on the same port as before, if any) until :meth:`down` or the group ends."""
        self._scope = await tg.start(self._serve)

    def down(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(scope)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in request:
                    try:
                        chunk = await stream.receive_some(4096)
                    except trio.BrokenResourceError:
                        return
                    if not chunk:
                        return
                    request += chunk
                self.requests += 1
                body = self.body
                head = (
                    f"HTTP/1.1 {self.status} {'OK' if self.status == 200 else 'Error'}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                )
                try:
                    await stream.send_all(head.encode() + body)
                except trio.BrokenResourceError:
                    return
