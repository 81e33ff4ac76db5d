"""The HTTP API's view of a running MarketDataService (implements ``http_api.ServiceView``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from application.service import MarketDataService
from application.status import Health, Role, StoreState
from domain.staleness import DEFAULT_MAX_FUTURE_SKEW_S, AgedPrice
from domain.timestamps import format_ns
from entrypoints.http_api import HealthInfo, RedisState, SubscriptionsInfo, Unavailable


class ServiceViewAdapter:
    def __init__(
        self,
        service: MarketDataService,
        *,
        store: str,
        max_age_s: float,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    ) -> None:
        self._service = service
        self._store = store
        self._max_age_s = max_age_s
        self._max_future_skew_s = max_future_skew_s

    def _redis_state(self) -> RedisState:
        if self._store == "memory":
            return "memory"
        return "ok" if self._service.status.store is StoreState.OK else "degraded"

    def health(self) -> HealthInfo:
        status = self._service.status
        health = status.health()
        ready = status.role is Role.LEADER and status.streaming
        detail: str | None = None
        if status.fatal_error is not None:
            detail = status.fatal_error
        elif status.role is Role.STANDBY:
            detail = "standby: another instance holds the lease and streams"
        elif status.store is not StoreState.OK:
            detail = f"price store unavailable: {status.store_error}"
        elif not status.connected:
            detail = f"feed {status.state.value}"
        elif not status.desired:
            detail = (
                "connected, but nothing will be priced: no symbol to subscribe (set "
                "MDS_SYMBOLS=AAPL,MSFT, or MDS_POSITION_SOURCE to follow open positions)"
            )
        elif not status.confirmed:
            detail = "connected, but no symbol subscribed"
        elif status.left_out:
            detail = f"{len(status.left_out)} symbols left out by the symbol limit"
        failing = status.features.detail()
        if failing is not None:
            detail = failing if detail is None else f"{detail}; {failing}"
        future = status.future_refusal_detail(self._service.clock.monotonic())
        if future is not None:
            detail = future if detail is None else f"{detail}; {future}"
            if health is Health.HEALTHY:
                health = Health.DEGRADED
        last = status.last_message_ns
        return HealthInfo(
            status=health.value,
            websocket_connected=status.connected,
            subscribed_symbols=len(status.confirmed),
            reconnect_attempts=status.reconnect_attempts,
            last_message_time=format_ns(last) if last is not None else None,
            connection_state=status.state.value,
            redis=self._redis_state(),
            uptime_s=round(status.uptime_s(self._service.clock.monotonic()), 3),
            role=status.role.value,
            ready=ready and health is not Health.FAILED,
            detail=detail,
        )

    async def get_prices(self, symbols: Sequence[str]) -> Mapping[str, AgedPrice]:
        prices = await self._service.cache.get_many(symbols)
        now = self._service.clock.now_ns()
        skew = self._max_future_skew_s
        return {s: AgedPrice.at(p, now, self._max_age_s, skew) for s, p in prices.items()}

    def subscriptions(self) -> SubscriptionsInfo:
        status = self._service.status
        return SubscriptionsInfo(
            desired=sorted(status.desired),
            confirmed=sorted(status.confirmed),
            left_out=list(status.left_out),
            rejected=sorted(status.rejected),
            last_sync_error=status.last_sync_error,
        )

    async def sync_now(self) -> SubscriptionsInfo:
        if self._service.status.role is Role.STANDBY:
            raise Unavailable("standby instance: the leader syncs subscriptions")
        await self._service.sync.request()  # coalesced: one running, one pending
        return self.subscriptions()
