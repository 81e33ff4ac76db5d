"""ServiceStatus, the source of /health, /ready and the metrics: each rule on its own, at its
edges (plain state, no clock: times are arguments)."""

from __future__ import annotations

import pytest

from application.status import (
    FUTURE_REFUSAL_DEGRADED_S,
    Health,
    Role,
    ServiceStatus,
    StoreState,
)
from domain.connection import ConnectionState
from domain.features import METRICS

S = 1_000_000_000  # ns per second


def connected(**kw: object) -> ServiceStatus:
    status = ServiceStatus(started_at=100.0, **kw)  # type: ignore[arg-type]
    for state in (
        ConnectionState.CONNECTING,
        ConnectionState.AUTHENTICATING,
        ConnectionState.CONNECTED,
    ):
        status.set_state(state)
    return status


# Read through calls: mypy would narrow an attribute across the mutations in between.
def state_of(status: ServiceStatus) -> ConnectionState:
    return status.state


def streaming(status: ServiceStatus) -> bool:
    return status.streaming


def expected_since(status: ServiceStatus) -> int | None:
    return status.data_expected_since_ns


def test_setting_the_current_state_again_is_a_no_op_and_a_move_is_checked() -> None:
    status = connected()
    status.set_state(ConnectionState.CONNECTED)  # not CONNECTED -> CONNECTED (illegal)
    assert status.state is ConnectionState.CONNECTED and status.connected
    status.set_state(ConnectionState.DISCONNECTED)
    assert state_of(status) is ConnectionState.DISCONNECTED and not status.connected


def test_streaming_needs_a_connection_a_confirmed_symbol_and_the_store() -> None:
    status = connected(confirmed=frozenset({"AAPL"}))
    assert streaming(status)
    status.store = StoreState.DEGRADED
    assert not streaming(status)
    status.store = StoreState.OK
    status.confirmed = frozenset()
    assert not streaming(status)
    status.confirmed = frozenset({"AAPL"})
    status.set_state(ConnectionState.DISCONNECTED)
    assert not streaming(status)


def test_a_leader_is_healthy_only_connected_with_its_store_and_no_failing_feature() -> None:
    status = connected()
    assert status.health() is Health.HEALTHY
    status.store = StoreState.DEGRADED
    assert status.health() is Health.DEGRADED
    status.store = StoreState.OK
    status.features.fail(METRICS, "histogram exploded")
    assert status.health() is Health.DEGRADED
    status.features.recover(METRICS)
    assert status.health() is Health.HEALTHY
    status.set_state(ConnectionState.DISCONNECTED)
    assert status.health() is Health.DEGRADED


@pytest.mark.parametrize("why", ["fatal_error", "connection_failed"])
def test_a_fatal_error_or_a_failed_connection_is_failed_whatever_the_role(why: str) -> None:
    for role in Role:
        status = connected(role=role)
        if why == "fatal_error":
            status.fatal_error = "bad credentials"
        else:
            status.set_state(ConnectionState.FAILED)
        assert status.health() is Health.FAILED


def test_a_standby_is_healthy_unconnected_and_degraded_by_its_store_or_a_feature() -> None:
    status = ServiceStatus(started_at=0.0, role=Role.STANDBY)
    assert not status.connected and status.health() is Health.HEALTHY
    status.store = StoreState.DEGRADED
    assert status.health() is Health.DEGRADED
    status.store = StoreState.OK
    status.features.fail(METRICS, "histogram exploded")
    assert status.health() is Health.DEGRADED


def test_data_is_expected_from_the_first_confirmed_symbol_until_none_is_confirmed() -> None:
    status = ServiceStatus(started_at=0.0)
    status.note_subscribed(1 * S)
    assert expected_since(status) is None  # nothing confirmed
    status.confirmed = frozenset({"AAPL"})
    status.note_subscribed(2 * S)
    status.note_subscribed(3 * S)  # more symbols: still expected since the first
    assert expected_since(status) == 2 * S
    status.confirmed = frozenset()
    status.note_subscribed(4 * S)
    assert expected_since(status) is None


def test_silence_counts_from_the_last_data_or_from_when_data_was_expected() -> None:
    status = ServiceStatus(started_at=0.0)
    assert status.silent_s(10 * S) is None  # nothing expected
    status.confirmed = frozenset({"AAPL"})
    status.note_subscribed(2 * S)
    assert status.silent_s(10 * S) == 8.0  # no data yet
    status.last_message_ns = 7 * S
    assert status.silent_s(10 * S) == 3.0


def test_a_future_stamped_refusal_is_reported_for_10_s_after_it() -> None:
    status = ServiceStatus(started_at=0.0)
    assert status.future_refusal_detail(50.0) is None  # none yet
    status.counters["refused_future"] = 3
    status.last_future_refusal = "AAPL stamped 3600 s ahead"
    status.last_future_refused_at = 40.0
    detail = "3 quotes refused as stamped in the future (last: AAPL stamped 3600 s ahead)"
    assert status.future_refusal_detail(40.0) == detail
    assert FUTURE_REFUSAL_DEGRADED_S == 10.0
    assert status.future_refusal_detail(50.0) == detail  # 10 s after: still
    assert status.future_refusal_detail(50.001) is None


def test_uptime_counts_from_the_start() -> None:
    assert ServiceStatus(started_at=100.0).uptime_s(160.5) == 60.5
