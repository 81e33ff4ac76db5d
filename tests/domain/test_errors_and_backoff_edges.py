"""Edges the mutation run found unpinned: error attributes and texts, backoff defaults."""

from __future__ import annotations

import pytest

from domain.backoff import BackoffPolicy, ReconnectBackoff
from domain.connection import ConnectionState
from domain.errors import (
    FatalFeedError,
    FatalStoreError,
    FeedDisconnected,
    FeedError,
    IllegalTransition,
    InvalidSymbol,
    RetryableFeedError,
    SymbolsRejected,
)


def test_feed_errors_keep_reason_and_code_and_name_the_code_only_when_there_is_one() -> None:
    plain = FeedError("dropped")
    assert plain.reason == "dropped" and plain.code is None and str(plain) == "dropped"
    coded = FeedError("slow client", code=407)
    assert coded.reason == "slow client" and coded.code == 407
    assert str(coded) == "slow client (code 407)"


def test_retryable_errors_carry_their_minimum_delay_defaulting_to_none_asked() -> None:
    assert FeedDisconnected("x").min_delay == 0.0
    limited = RetryableFeedError("limit", code=406, min_delay=15.0)
    assert limited.min_delay == 15.0 and limited.code == 406


def test_a_fatal_error_without_a_setting_says_only_its_reason() -> None:
    assert str(FatalFeedError("bad", code=402)) == "bad (code 402)"
    named = FatalFeedError("bad", code=402, setting="ALPACA_API_KEY")
    assert named.setting == "ALPACA_API_KEY"
    assert str(named) == "bad (code 402); check ALPACA_API_KEY"


def test_a_fatal_store_error_names_its_setting() -> None:
    error = FatalStoreError("wrong password", setting="REDIS_URL")
    assert error.reason == "wrong password" and error.setting == "REDIS_URL"
    assert str(error) == "wrong password; check REDIS_URL"
    assert not isinstance(error, ConnectionError)  # an outage is retried, this is not


def test_symbols_rejected_carries_its_symbols_code_and_kind() -> None:
    error = SymbolsRejected("refused", frozenset({"X"}), code=400)
    assert error.symbols == {"X"} and error.code == 400 and error.limit_exceeded is False
    limit = SymbolsRejected("limit", frozenset({"Y"}), code=405, limit_exceeded=True)
    assert limit.limit_exceeded is True


def test_invalid_symbol_and_illegal_transition_carry_what_they_name() -> None:
    bad = InvalidSymbol("a$", "lower case")
    assert bad.symbol == "a$" and bad.why == "lower case"
    assert str(bad) == "invalid symbol 'a$': lower case"
    moved = IllegalTransition(ConnectionState.FAILED, ConnectionState.CONNECTING)
    assert moved.current is ConnectionState.FAILED
    assert moved.target is ConnectionState.CONNECTING
    assert str(moved) == "illegal connection-state transition failed -> connecting"


def test_attempt_numbers_are_1_based() -> None:
    with pytest.raises(ValueError, match="1-based, got 0"):
        BackoffPolicy().ceiling(0)


def test_without_a_venue_floor_a_jittered_delay_may_be_zero() -> None:
    # The default min_delay is 0: full jitter drawing 0 retries at once.
    assert BackoffPolicy(jitter=True).next_delay(1, lambda: 0.0) == 0.0
    assert ReconnectBackoff(BackoffPolicy(base_s=0.1, cap_s=1.0)).on_failure() == 0.1


def test_a_failure_forgets_the_connection_so_it_never_counts_as_healthy() -> None:
    tracker = ReconnectBackoff(BackoffPolicy(reset_after_s=60))
    tracker.on_connected(0.0)
    tracker.on_failure()
    assert tracker.connected_at is None
    assert not tracker.healthy_at(1_000.0) and tracker.attempts == 1


def test_a_long_invalid_symbol_is_named_by_its_first_40_characters_and_its_length() -> None:
    fits = "A" * 38  # its repr, quotes included, is 40 characters: shown in full
    assert str(InvalidSymbol(fits, "bad")) == f"invalid symbol '{fits}': bad"
    long = "B" * 500
    assert str(InvalidSymbol(long, "bad")) == (f"invalid symbol '{'B' * 39}… (500 characters): bad")


def test_a_fatal_store_errors_repr_carries_its_reason() -> None:
    # repr (what %r log fields and printed containers show) names the reason, not None.
    assert repr(FatalStoreError("wrong password", setting="REDIS_URL")) == (
        "FatalStoreError('wrong password')"
    )


def test_symbols_rejected_keeps_its_reason() -> None:
    error = SymbolsRejected("not allowed", frozenset({"X"}), code=400)
    assert error.reason == "not allowed" and str(error) == "not allowed (code 400)"
