"""The subscriber inbox every EventBus adapter uses: a gap is raised in order with the items,
iterating goes on after it, and an overflow drops the oldest items but never a gap."""

from __future__ import annotations

import pytest

from adapters.inbox import Inbox, SubscriptionStats
from ports.event_bus import SubscriptionGap


async def test_a_gap_is_raised_in_order_survives_overflow_and_iterating_goes_on() -> None:
    inbox: Inbox[int] = Inbox(3, SubscriptionStats(), "test")
    inbox.deliver([1, 2])
    inbox.gap(SubscriptionGap(frozenset({"AAPL"}), "shard lost"))
    inbox.deliver([3, 4, 5, 6])  # 6 items for 3 places: 1, 2 and 3 dropped, not the gap
    assert inbox.stats.dropped == 3
    with pytest.raises(SubscriptionGap) as gap:
        await anext(inbox)
    assert gap.value.symbols == {"AAPL"}
    inbox.close()
    assert [i async for i in inbox] == [4, 5, 6]
