"""Symbols, staleness, the subscription diff, backoff and connection states."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from domain.backoff import BackoffPolicy, ReconnectBackoff, SlotRetry
from domain.connection import ConnectionState as S
from domain.connection import ConnectionStateMachine
from domain.errors import FatalFeedError, IllegalTransition, InvalidSymbol
from domain.price import Price
from domain.staleness import (
    AgedPrice,
    age_seconds,
    future_limit_ns,
    is_silent,
    is_stale,
    silence_s,
    skew_ns,
    too_far_ahead,
)
from domain.subscriptions import plan_subscriptions
from domain.symbols import normalize_symbol, parse_symbol_list, validate_symbol


@pytest.mark.parametrize("ok", ["AAPL", "BRK.B", "BTC/USD", "FAKEPACA", "A", "AAPL240119C00100000"])
def test_valid_symbols(ok: str) -> None:
    assert validate_symbol(ok) == ok


@pytest.mark.parametrize("bad", ["", "aapl", "AAPL ", "A$", ".A", "X" * 22, "ÄPFEL", "*"])
def test_invalid_symbols_name_the_symbol(bad: str) -> None:
    with pytest.raises(InvalidSymbol) as info:
        validate_symbol(bad)
    assert repr(bad) in str(info.value)


def test_symbol_lists_are_normalised() -> None:
    assert parse_symbol_list(" aapl, msft ,,BRK.B") == {"AAPL", "MSFT", "BRK.B"}
    assert normalize_symbol(" spy ") == "SPY"
    with pytest.raises(InvalidSymbol, match="'A\\$'"):
        parse_symbol_list("AAPL,a$")


def test_staleness() -> None:
    price = Price("A", 1.0, 2.0, 1.5, 1_000_000_000_000, "V")
    assert age_seconds(price, 1_000_000_000_000 + 300 * 10**9) == 300
    assert not is_stale(price, 1_000_000_000_000 + 300 * 10**9)
    assert is_stale(price, 1_000_000_000_000 + 300 * 10**9 + 1)
    aged = AgedPrice.at(price, 1_000_000_000_000 + 5 * 10**9, max_age_s=4)
    assert aged.age_s == 5 and aged.stale


def test_a_price_stamped_ahead_is_never_fresh_with_a_negative_age() -> None:
    """Within the future skew (clock jitter) the age is 0 and the price fresh; beyond it the
    price is stale, its negative age shown as it is (the issue: age_s -2.27e9, stale false)."""
    ts = 1_000_000_000_000
    price = Price("A", 1.0, 2.0, 1.5, ts, "V")
    assert AgedPrice.at(price, ts - 10**6) == AgedPrice(price, 0.0, False)  # 1 ms ahead
    assert AgedPrice.at(price, ts - 5 * 10**9, max_future_skew_s=5) == (price, 0.0, False)
    beyond = AgedPrice.at(price, ts - 5 * 10**9 - 1, max_future_skew_s=5)
    assert beyond.stale and beyond.age_s < 0
    assert is_stale(price, ts - 3600 * 10**9)
    assert not is_stale(price, ts - 10**9)
    assert too_far_ahead(ts, ts - 5 * 10**9 - 1, skew_ns(5)) is True
    assert too_far_ahead(ts, ts - 5 * 10**9, skew_ns(5)) is False
    assert future_limit_ns(ts, skew_ns(5)) == ts + 5 * 10**9


def test_diff_adds_and_removes() -> None:
    plan = plan_subscriptions({"AAPL", "NVDA"}, {"SPY"}, {"AAPL", "TSLA"})
    assert plan.to_add == {"NVDA", "SPY"} and plan.to_remove == {"TSLA"}
    assert plan.target == {"AAPL", "NVDA", "SPY"} and plan.left_out == ()


def test_capacity_rule_positions_then_current_then_alphabetical() -> None:
    plan = plan_subscriptions({"ZZZ", "MMM"}, {"AAA", "BBB", "CCC"}, {"CCC"}, capacity=4)
    assert plan.target == {"ZZZ", "MMM", "CCC", "AAA"}
    assert plan.left_out == ("BBB",)


def test_left_out_is_sorted_alphabetically_not_in_rank_order() -> None:
    # Ranked: held ZZZ, YYY first, then current DDD, then AAA...; capacity 2 keeps ZZZ, YYY.
    plan = plan_subscriptions({"ZZZ", "YYY"}, {"DDD", "AAA", "CCC"}, {"DDD"}, capacity=2)
    assert plan.target == {"YYY", "ZZZ"}
    assert plan.left_out == ("AAA", "CCC", "DDD")  # rank order would be DDD, AAA, CCC


def test_capacity_0_subscribes_nothing_and_leaves_everything_out() -> None:
    # 0 is a real capacity here (MDS_SYMBOL_LIMIT=0 becomes None, "unlimited", in settings).
    plan = plan_subscriptions({"AAPL"}, {"SPY", "MSFT"}, {"SPY"}, capacity=0)
    assert plan.target == frozenset()
    assert plan.to_remove == {"SPY"} and plan.to_add == frozenset()
    assert plan.left_out == ("AAPL", "MSFT", "SPY")


def test_capacity_none_is_unlimited() -> None:
    symbols = {f"S{i:02d}" for i in range(50)}
    plan = plan_subscriptions(symbols, set(), set(), capacity=None)
    assert plan.target == symbols and plan.left_out == ()


def test_a_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        plan_subscriptions({"A"}, set(), set(), capacity=-1)


symbol_sets = st.frozensets(st.sampled_from([f"S{i}" for i in range(40)]), max_size=40)


@given(symbol_sets, symbol_sets, symbol_sets, st.none() | st.integers(0, 45))
@example(frozenset({"S1"}), frozenset({"S2"}), frozenset({"S2"}), 0)  # capacity 0: nothing kept
@example(frozenset(), frozenset(), frozenset({"S1"}), None)  # nothing desired: remove all
@example(frozenset({"S1", "S2"}), frozenset({"S3"}), frozenset(), 1)  # held beat watched
@example(frozenset({"S1"}), frozenset({"S1"}), frozenset(), 45)  # held and watched: once
def test_diff_properties(
    held: frozenset[str], static: frozenset[str], current: frozenset[str], cap: int | None
) -> None:
    plan = plan_subscriptions(held, static, current, cap)
    desired = held | static
    assert plan.target <= desired
    assert (current | plan.to_add) - plan.to_remove == plan.target
    assert not plan.to_add & current and plan.to_remove <= current
    assert set(plan.left_out) | plan.target == desired
    assert not set(plan.left_out) & plan.target
    if cap is not None:
        assert len(plan.target) == min(cap, len(desired))
        # A held symbol never loses to one that is only watched.
        assert not (set(plan.left_out) & held and plan.target - held)
        assert list(plan.left_out) == sorted(plan.left_out)
    else:
        assert plan.left_out == () and plan.target == desired
    assert plan == plan_subscriptions(held, static, current, cap)  # deterministic


def test_backoff_sequence() -> None:
    policy = BackoffPolicy()
    assert [policy.next_delay(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert BackoffPolicy(max_attempts=2).next_delay(3) is None


@given(
    st.integers(1, 10_000),
    st.floats(0, 1, exclude_max=True),
    st.floats(0.1, 10),
    st.floats(10, 1000),
)
@example(1, 0.0, 0.1, 10.0)  # the first attempt, jitter drawing 0: a delay of 0
@example(10_000, 0.999999, 10.0, 10.0)  # huge attempt (no overflow); base == cap
@example(6, 0.5, 0.1, 1000.0)  # well below the cap
def test_backoff_bounds(attempt: int, r: float, base: float, cap: float) -> None:
    policy = BackoffPolicy(base_s=base, cap_s=cap, jitter=True)
    delay = policy.next_delay(attempt, lambda: r)
    assert delay is not None and 0 <= delay <= cap
    plain = BackoffPolicy(base_s=base, cap_s=cap).next_delay(attempt)
    assert plain is not None and base <= plain <= cap


def test_backoff_resets_after_a_healthy_period() -> None:
    tracker = ReconnectBackoff(BackoffPolicy(reset_after_s=60))
    assert [tracker.on_failure() for _ in range(3)] == [5, 10, 20]
    tracker.on_connected(100.0)
    assert not tracker.healthy_at(159.9) and tracker.attempts == 3
    assert tracker.healthy_at(160.0) and tracker.attempts == 0
    assert tracker.on_failure() == 5


def test_bad_policies_are_refused() -> None:
    for kwargs in ({"base_s": 0}, {"base_s": 10, "cap_s": 5}, {"max_attempts": 0}):
        with pytest.raises(ValueError):
            BackoffPolicy(**kwargs)  # type: ignore[arg-type]


def test_connection_states() -> None:
    machine = ConnectionStateMachine()
    for state in (
        S.CONNECTING,
        S.AUTHENTICATING,
        S.CONNECTED,
        S.DISCONNECTED,
        S.CONNECTING,
        S.DISCONNECTED,
        S.CONNECTING,
        S.FAILED,
    ):
        machine.to(state)
    assert machine.failed
    with pytest.raises(IllegalTransition):
        machine.to(S.CONNECTING)
    with pytest.raises(IllegalTransition):
        ConnectionStateMachine().to(S.CONNECTED)


def test_fatal_error_names_the_setting() -> None:
    assert "check ALPACA_API_KEY" in str(
        FatalFeedError("auth failed", code=402, setting="ALPACA_API_KEY")
    )


def test_a_symbol_of_the_longest_length_is_valid_one_longer_is_not() -> None:
    longest = "AAPL240119C00100000XY"  # 21 characters, the length of an OCC symbol
    assert validate_symbol(longest) == longest
    with pytest.raises(InvalidSymbol) as info:
        validate_symbol(longest + "Z")
    assert info.value.why == "longer than 21 characters"


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (42, "not a string"),
        (None, "not a string"),
        ("", "empty"),
        (
            "aapl",
            "use upper-case letters, digits, '.', '/' or '-', starting with a letter or digit",
        ),
    ],
)
def test_an_invalid_symbol_says_what_is_wrong_with_it(bad: object, why: str) -> None:
    with pytest.raises(InvalidSymbol) as info:
        validate_symbol(bad)
    assert info.value.symbol == bad and info.value.why == why
    assert str(info.value) == f"invalid symbol {bad!r}: {why}"


def test_an_aged_price_carries_the_price_and_its_fractional_age() -> None:
    ts = 1_000_000_000_000
    price = Price("A", 1.0, 2.0, 1.5, ts, "V")
    assert AgedPrice.at(price, ts + 5 * 10**8) == AgedPrice(price, 0.5, False)
    far_ahead = AgedPrice.at(price, ts - 3600 * 10**9)
    assert far_ahead.price is price and far_ahead.age_s == -3600.0 and far_ahead.stale


def test_is_stale_uses_the_future_skew_it_is_given() -> None:
    ts = 1_000_000_000_000
    price = Price("A", 1.0, 2.0, 1.5, ts, "V")
    ten_s_ahead = ts - 10 * 10**9
    assert is_stale(price, ten_s_ahead)  # the default skew is 5 s
    assert not is_stale(price, ten_s_ahead, max_future_skew_s=20)


def test_a_slot_retry_needs_a_positive_cadence_no_longer_than_its_window() -> None:
    assert (
        SlotRetry(cadence_s=5.0, window_s=5.0).delay(
            slot_taken=True, had_session=False, since_start_s=0.0
        )
        == 5.0
    )
    for cadence, window in ((0.0, 90.0), (-1.0, 90.0), (91.0, 90.0)):
        with pytest.raises(ValueError) as info:
            SlotRetry(cadence_s=cadence, window_s=window)
        assert str(info.value) == f"bad slot retry: cadence {cadence}, window {window}"


def test_silence_is_counted_from_the_last_data_or_from_when_data_was_expected() -> None:
    s = 10**9
    assert silence_s(None, 10 * s, 10 * s + s // 2) == 0.5  # nothing yet: since expected
    assert silence_s(12 * s, 10 * s, 15 * s) == 3.0  # since the last data
    assert silence_s(5 * s, 10 * s, 15 * s) == 5.0  # data before the symbols came: since then
    assert silence_s(None, 10 * s, 10 * s - 3) == 0.0  # clocks read a few ns apart


def test_a_silence_is_a_stall_only_when_longer_than_the_bound() -> None:
    assert not is_silent(30.0, 30.0)
    assert is_silent(30.001, 30.0)
    assert not is_silent(1e9, None)  # no bound: quiet streams are normal


def test_a_single_attempt_and_a_constant_delay_are_valid_policies() -> None:
    once = BackoffPolicy(max_attempts=1)
    assert once.next_delay(1) == 5.0 and once.next_delay(2) is None
    flat = BackoffPolicy(factor=1.0)
    assert [flat.next_delay(n) for n in (1, 2, 3)] == [5.0, 5.0, 5.0]


def test_a_bad_policy_says_what_is_wrong() -> None:
    with pytest.raises(ValueError) as info:
        BackoffPolicy(factor=0.5)
    assert str(info.value) == "bad backoff policy: base 5.0, cap 300.0, factor 0.5"
    with pytest.raises(ValueError) as attempts:
        BackoffPolicy(max_attempts=0)
    assert str(attempts.value) == "max_attempts must be >= 1, got 0"


def test_an_illegal_transition_names_where_it_was_and_where_it_was_asked_to_go() -> None:
    machine = ConnectionStateMachine(S.FAILED)
    with pytest.raises(IllegalTransition) as info:
        machine.to(S.CONNECTING)
    assert info.value.current is S.FAILED and info.value.target is S.CONNECTING
    assert machine.state is S.FAILED
