"""The HTTP API's view of a running MarketDataService (implements ``http_api.ServiceView``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from application.service import MarketDataService
from application.status import Health, Role, StoreState
from application.streams import Stream
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

    def _unconfirmed(self) -> frozenset[str]:
        """Symbols some stream asked for and the venue's ack left out."""
        out: frozenset[str] = frozenset()
        for stream in self._service.streams:
            out |= stream.status.unconfirmed
        return out

    def _redis_state(self) -> RedisState:
        if self._store == "memory":
            return "memory"
        return "ok" if self._service.status.store is StoreState.OK else "degraded"

    def health(self) -> HealthInfo:
        service = self._service
        status = service.status
        health = service.health()
        ready = status.role is Role.LEADER and service.streaming()
        connected = service.connected()
        confirmed = service.confirmed()
        detail: str | None = None
        if status.fatal_error is not None:
            detail = status.fatal_error
        elif status.role is Role.STANDBY and status.store is not StoreState.OK:
            # Its lease polls (or an ex-leader's last writes) failed: say why, like a leader.
            detail = f"standby: redis degraded: {status.store_error or 'unknown error'}"
        elif status.role is Role.STANDBY:
            detail = (
                "standby: another instance holds the lease (a hand-over leaves no leader "
                "for a few seconds at most)"
            )
        elif status.store is not StoreState.OK:
            detail = f"price store unavailable: {status.store_error}"
        elif not service.single and service.stream_details():
            detail = "; ".join(service.stream_details())
        elif not connected:
            detail = f"feed {service.connection_state()}"
        elif not status.desired:
            detail = (
                "connected, but nothing will be priced: no symbol to subscribe (set "
                "MDS_SYMBOLS=AAPL,MSFT, or MDS_POSITION_SOURCE to follow open positions)"
            )
        elif not confirmed:
            detail = "connected, but no symbol subscribed"
        elif status.left_out:
            detail = f"{len(status.left_out)} symbols left out by the symbol limit"
        silent = service.silent_streams()
        if silent:
            quiet = "; ".join(service.silence_detail(stream, s) for stream, s in silent)
            detail = quiet if detail is None else f"{detail}; {quiet}"
        missing = self._unconfirmed()
        if missing:
            shown = ", ".join(sorted(missing)[:10])
            more = len(missing) - 10
            unconfirmed = (
                f"{len(missing)} symbols not confirmed by the venue (asked for again at every "
                f"sync): {shown}{f' and {more} more' if more > 0 else ''}"
            )
            detail = unconfirmed if detail is None else f"{detail}; {unconfirmed}"
        failing = status.features.detail()
        if failing is not None:
            detail = failing if detail is None else f"{detail}; {failing}"
        future = status.future_refusal_detail(self._service.clock.monotonic())
        if future is not None:
            detail = future if detail is None else f"{detail}; {future}"
            if health is Health.HEALTHY:
                health = Health.DEGRADED
        last = service.last_message_ns()
        silences = {stream.name: service.silence_detail(stream, s) for stream, s in silent}
        return HealthInfo(
            status=health.value,
            websocket_connected=connected,
            subscribed_symbols=len(confirmed),
            reconnect_attempts=service.reconnect_attempts(),
            last_message_time=format_ns(last) if last is not None else None,
            connection_state=service.connection_state(),
            redis=self._redis_state(),
            uptime_s=round(status.uptime_s(service.clock.monotonic()), 3),
            role=status.role.value,
            ready=ready and health is not Health.FAILED,
            detail=detail,
            streams={
                stream.name: _stream_health(stream, silences.get(stream.name))
                for stream in service.streams
            },
        )

    async def get_prices(self, symbols: Sequence[str]) -> Mapping[str, AgedPrice]:
        prices = await self._service.cache.get_many(symbols)
        now = self._service.clock.now_ns()
        skew = self._max_future_skew_s
        return {s: AgedPrice.at(p, now, self._max_age_s, skew) for s, p in prices.items()}

    def subscriptions(self) -> SubscriptionsInfo:
        service = self._service
        status = service.status
        rejected: frozenset[str] = frozenset()
        for stream in service.streams:
            rejected |= stream.status.rejected
        return SubscriptionsInfo(
            desired=sorted(status.desired),
            confirmed=sorted(service.confirmed()),
            left_out=list(status.left_out),
            rejected=sorted(rejected),
            unconfirmed=sorted(self._unconfirmed()),
            last_sync_error=status.last_sync_error,
            unrouted=sorted(status.unrouted),
            streams={
                stream.name: {
                    "desired": sorted(stream.status.desired),
                    "confirmed": sorted(stream.status.confirmed),
                    "left_out": list(stream.status.left_out),
                    "rejected": sorted(stream.status.rejected),
                    "unconfirmed": sorted(stream.status.unconfirmed),
                    "disabled": stream.disabled,
                }
                for stream in service.streams
            },
        )

    async def sync_now(self) -> SubscriptionsInfo:
        if self._service.status.role is Role.STANDBY:
            raise Unavailable("standby instance: the leader syncs subscriptions")
        await self._service.sync.request()  # coalesced: one running, one pending
        return self.subscriptions()


def _stream_health(stream: Stream, silence: str | None) -> dict[str, object]:
    st = stream.status
    last = st.last_message_ns
    if stream.disabled is not None:
        state = "disabled"
    elif not stream.active and not st.connected:
        state = "idle"  # no symbols: not connected, on purpose
    else:
        state = st.state.value
    return {
        "state": state,
        "connected": st.connected,
        "subscribed_symbols": len(st.confirmed),
        "desired_symbols": len(st.desired),
        "reconnects": st.reconnects,
        "reconnect_attempts": st.reconnect_attempts,
        "last_message_time": format_ns(last) if last is not None else None,
        "detail": stream.disabled if stream.disabled is not None else silence,
    }
