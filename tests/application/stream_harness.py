"""A StreamMidPrices writer task on a spy cache, with the writes gated (see
``test_stream_prices_guarantees``): the test holds the writer inside ``put_many``, arranges the
pending prices exactly, then lets it go."""

from __future__ import annotations

from typing import Any

import anyio

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus
from application.status import ServiceStatus
from application.stream_prices import StreamMidPrices
from tests.application.helpers import T0, quote
from tests.application.spies import SpyPriceCache


class Harness:
    def __init__(self, stream: StreamMidPrices, spy: SpyPriceCache, status: ServiceStatus):
        self.stream = stream
        self.spy = spy
        self.status = status

    def handle(self, *quotes: tuple[str, int, float]) -> None:
        """One frame of quotes ``(symbol, ts offset, bid)``; ask is bid + 0.02."""
        self.stream.handle([quote(s, bid, bid + 0.02, T0 + ts) for s, ts, bid in quotes])

    async def hold_next_write(self) -> None:
        """Close the gate and wait until the writer is blocked inside its next ``put_many``."""
        self.spy.gate = anyio.Event()
        self.spy.entered = anyio.Event()
        await self.spy.entered.wait()

    def release(self) -> None:
        gate = self.spy.gate
        self.spy.gate = None
        assert gate is not None
        gate.set()

    def written(self, symbol: str) -> list[int]:
        """Venue timestamps (offsets from T0) of every write of ``symbol``, in write order."""
        return [p.ts_event_ns - T0 for p in self.spy.written if p.symbol == symbol]


class running:
    """``async with running(clock, bus, max_pending=..) as h``: a writer task on a spy cache."""

    def __init__(self, clock: VirtualClock, bus: InMemoryEventBus, **kw: Any) -> None:
        self.spy = SpyPriceCache()
        self.status = ServiceStatus(started_at=0.0)
        self.stream = StreamMidPrices(self.spy, bus, clock, self.status, **kw)
        self._tg: anyio.abc.TaskGroup | None = None
        self._guard = anyio.fail_after(30)

    async def __aenter__(self) -> Harness:
        self._guard.__enter__()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self.stream.run)
        return Harness(self.stream, self.spy, self.status)

    async def __aexit__(self, *exc: object) -> None:
        assert self._tg is not None
        if exc[0] is None:
            await self.stream.wait_idle()
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(*exc)  # type: ignore[arg-type]
        self._guard.__exit__(*exc)  # type: ignore[arg-type]
