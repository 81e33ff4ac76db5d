"""Subscriptions: what a session is subscribed to, channel by channel, compared by content."""

from __future__ import annotations

from domain.market import Channel, Subscriptions


def test_all_symbols_is_the_union_of_every_channel() -> None:
    subs = Subscriptions({Channel.QUOTES: frozenset({"AAPL"}), Channel.TRADES: frozenset({"SPY"})})
    assert subs.all_symbols() == {"AAPL", "SPY"}
    assert subs.symbols() == {"AAPL"} and subs.symbols(Channel.TRADES) == {"SPY"}
    assert subs.symbols(Channel.BARS) == frozenset()


def test_empty_means_no_symbol_on_any_channel() -> None:
    assert Subscriptions().is_empty()
    assert Subscriptions({Channel.QUOTES: frozenset()}).is_empty()
    assert not Subscriptions.quotes({"AAPL"}).is_empty()


def test_channels_without_symbols_do_not_make_subscriptions_differ() -> None:
    plain = Subscriptions.quotes({"AAPL"})
    padded = Subscriptions({Channel.QUOTES: frozenset({"AAPL"}), Channel.TRADES: frozenset()})
    assert plain == padded and hash(plain) == hash(padded)
    assert len({plain, padded}) == 1


def test_different_symbols_or_channels_differ() -> None:
    assert Subscriptions.quotes({"AAPL"}) != Subscriptions.quotes({"MSFT"})
    assert Subscriptions.quotes({"AAPL"}) != Subscriptions({Channel.TRADES: frozenset({"AAPL"})})
    assert Subscriptions.quotes({"AAPL"}) != {Channel.QUOTES: frozenset({"AAPL"})}
    assert Subscriptions.quotes({"AAPL"}).__eq__("AAPL") is NotImplemented


def test_different_subscriptions_hash_apart() -> None:
    # Equal ones hash alike (above); different ones must not all share one hash, or a set or
    # dict of them degrades to a linear scan.
    hashes = {hash(Subscriptions.quotes({f"S{i}"})) for i in range(20)}
    assert len(hashes) == 20
