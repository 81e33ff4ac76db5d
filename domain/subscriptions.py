"""Which symbols to stream: desired (positions ∪ static list) against current, within a capacity.

**Who wins when the desired set exceeds the capacity** (Alpaca's free plan: 30 symbols), in this
order, deterministic for the same inputs:

1. symbols with an open position before symbols only on the static list (a position needs a
   price for P&L; a watch-list entry does not);
2. within a tier, symbols already subscribed before new ones (no churn when one more arrives);
3. then alphabetical order.

Symbols that lose are reported in ``left_out`` (sorted), never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FREE_PLAN_SYMBOL_LIMIT = 30


@dataclass(frozen=True, slots=True)
class SubscriptionPlan:
    """The outcome of one diff: the target set and the changes that reach it from ``current``."""

    target: frozenset[str]
    to_add: frozenset[str]
    to_remove: frozenset[str]
    left_out: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.to_add or self.to_remove)


def rank_symbols(
    positions: Iterable[str], static: Iterable[str], current: Iterable[str]
) -> list[str]:
    """Every desired symbol, best first, by the module's rule."""
    held = frozenset(positions)
    watched = frozenset(static) - held
    now = frozenset(current)

    def key(symbol: str) -> tuple[int, int, str]:
        return (0 if symbol in held else 1, 0 if symbol in now else 1, symbol)

    return sorted(held | watched, key=key)


def plan_subscriptions(
    positions: Iterable[str],
    static: Iterable[str],
    current: Iterable[str],
    capacity: int | None = None,
) -> SubscriptionPlan:
    """Diff desired against ``current``; with a ``capacity``, keep the best-ranked symbols."""
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    now = frozenset(current)
    ranked = rank_symbols(positions, static, now)
    keep = ranked if capacity is None else ranked[:capacity]
    left_out = () if capacity is None else tuple(sorted(ranked[capacity:]))
    target = frozenset(keep)
    return SubscriptionPlan(target, target - now, now - target, left_out)
