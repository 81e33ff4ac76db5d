"""A loopback TCP proxy that can freeze: bytes stop flowing both ways while the sockets stay
open. That is a half-dead connection (no data, no pongs, no FIN), which only timeouts detect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio


class FreezableProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._flowing = trio.Event()
        self._flowing.set()
        self.connections = 0

    def freeze(self) -> None:
        self._flowing = trio.Event()

    def thaw(self) -> None:
        self._flowing.set()

    def url(self, path: str = "/v2/iex") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while True:
                data = await source.receive_some(65536)
                await self._flowing.wait()
                if not data:
                    await sink.send_eof()
                    return
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        async with client:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream)
                nursery.start_soon(self._pump, upstream, client)


@asynccontextmanager
async def freezable_proxy(upstream_port: int) -> AsyncIterator[FreezableProxy]:
    proxy = FreezableProxy(upstream_port)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
