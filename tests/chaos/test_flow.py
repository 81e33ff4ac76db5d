"""The chaos soak's per-symbol flow invariant can fire: timelines planted into the engine's
checks (no processes), among them issue 11's defect 9 (a dead cluster master, and the symbols on
the masters that stayed up cached but not published). Async only because the engine stamps each
violation with the event loop's clock."""

from __future__ import annotations

from entrypoints.chaos.engine import (
    CLUSTER_SERVES_S,
    GAP_S,
    SHARD_GAP_S,
    Active,
    Engine,
    _nothing,
)
from entrypoints.chaos.flow import FlowWatch
from entrypoints.chaos.schedule import plan

SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY")
STEP_S = 0.02  # the local server quotes each symbol ~50 times a second
TICK_S = 0.1  # the engine's flow monitor evaluates this often


def engine() -> Engine:
    return Engine(plan(0, 60, block_s=60))


def play(
    e: Engine, start: float, end: float, publishing: tuple[str, ...], *, published: bool = True
) -> float:
    """Symbols in ``publishing`` are published every STEP_S from ``start`` to ``end`` (only
    cached, never published, when ``published`` is false: the planted defect); the engine's
    flow check runs every TICK_S. Returns ``end``."""
    t = start
    next_tick = start
    while t < end:
        if published:
            for symbol in publishing:
                e.flow.published(symbol, t)
        if t >= next_tick:
            e.check_flow(SYMBOLS, t)
            next_tick += TICK_S
        t += STEP_S
    return end


def master_kill(e: Engine, now: float, on_dead_master: frozenset[str]) -> None:
    active = [Active("cluster.master_kill", _nothing, on_dead_master, CLUSTER_SERVES_S)]
    e.expect_during(active, interrupts=False, now=now)


def gaps(e: Engine) -> list[str]:
    return [v.detail for v in e.report.violations if v.invariant == "published_without_gap"]


async def test_defect_9_planted_symbols_on_healthy_masters_not_published_is_a_violation() -> None:
    """Before the fix: from the master's death on, a batch is published only when every master
    applied it, so nothing is published, for AAPL (on the dead master: exempt) nor for the
    others (on healthy masters: not exempt)."""
    e = engine()
    e.flow.expect(0.0, GAP_S)  # settled
    t = play(e, 0.0, 5.0, SYMBOLS)
    master_kill(e, t, frozenset({"AAPL"}))
    play(e, t, t + CLUSTER_SERVES_S, SYMBOLS, published=False)  # cached, never published
    (detail,) = gaps(e)
    for symbol in ("MSFT", "NVDA", "SPY"):
        assert f"{symbol} for" in detail
    assert "AAPL for" not in detail and "exempt: ['AAPL']" in detail
    assert f"bound {SHARD_GAP_S:g} s" in detail


async def test_after_the_fix_the_healthy_masters_symbols_flow_and_nothing_is_reported() -> None:
    e = engine()
    e.flow.expect(0.0, GAP_S)
    t = play(e, 0.0, 5.0, SYMBOLS)
    master_kill(e, t, frozenset({"AAPL"}))
    t = play(e, t, t + CLUSTER_SERVES_S, ("MSFT", "NVDA", "SPY"))
    # Then the whole cluster goes down (node timeout): nothing is expected any more.
    play(e, t, t + 5.0, ())
    assert gaps(e) == []
    assert e.report.checks["published_without_gap"] > 0


async def test_a_symbol_silently_dropped_between_faults_is_a_violation_and_not_during_one() -> None:
    e = engine()
    e.flow.expect(0.0, GAP_S)
    t = play(e, 0.0, 3.0, SYMBOLS)
    e.flow.pause()  # an interrupting fault (the feed dropped): every price may stop
    t = play(e, t, t + 10.0, ())
    assert gaps(e) == []
    e.flow.expect(t, GAP_S)  # settled
    play(e, t, t + GAP_S + 0.5, ("AAPL", "MSFT", "SPY"))  # NVDA's publishes dropped
    (detail,) = gaps(e)
    assert "NVDA for" in detail and "MSFT" not in detail


def test_the_settle_step_sees_a_symbol_cached_but_not_published() -> None:
    flow = FlowWatch()
    for t in (1.0, 2.0):
        for symbol in SYMBOLS:
            flow.published(symbol, t)
    cleared = 5.0
    for symbol in ("AAPL", "MSFT", "SPY"):
        flow.published(symbol, 6.0)
    assert flow.unpublished_since(SYMBOLS, cleared) == ["NVDA"]
