"""ReplayQuoteFeed in virtual time (trio's MockClock): pacing, subscriptions, end and loop."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from adapters.alpaca import read_recording
from adapters.alpaca.wire import decode_frame
from adapters.clock import VirtualClock
from adapters.replay import RecordingUnusable, ReplayQuoteFeed, sample_recording
from domain.connection import ConnectionState
from domain.errors import FeedDisconnected
from domain.market import Channel, MarketEvent, Quote, Subscriptions
from domain.stats import FeedStats
from ports.quote_feed import QuoteFeed

GUARD_S = 60.0  # virtual seconds
SYMBOLS = frozenset({"AAPL", "MSFT", "SPY", "BRK.B"})


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


def recorded() -> list[tuple[int, list[MarketEvent]]]:
    """(receive ns, data events) of every frame of the sample, decoded directly."""
    out = []
    for frame in read_recording(sample_recording()):
        events, _ = decode_frame(frame.data, 0, FeedStats())
        out.append((frame.received_ns, events))
    return out


async def drain(feed: ReplayQuoteFeed, request: Subscriptions) -> list[Sequence[MarketEvent]]:
    batches: list[Sequence[MarketEvent]] = []
    async with feed.connect() as session:
        await session.subscribe(request)
        with pytest.raises(FeedDisconnected, match="end of recording"):
            async for batch in session.events():
                batches.append(batch)
    return batches


def test_the_replay_implements_the_port() -> None:
    feed: QuoteFeed = ReplayQuoteFeed.sample()  # checked by mypy
    assert feed.stats.frames == 0


def test_the_sample_ships_with_the_package() -> None:
    frames = recorded()
    assert 200 <= len(frames) <= 1000
    symbols = {e.symbol for _, events in frames for e in events}
    assert symbols == SYMBOLS
    assert all(isinstance(e, Quote) for _, events in frames for e in events)


@pytest.mark.parametrize("speed", [1.0, 10.0])
async def test_paced_by_recorded_receive_times(speed: float) -> None:
    frames = recorded()
    span_s = (frames[-1][0] - frames[0][0]) / 1e9
    with trio.fail_after(GUARD_S):
        start = trio.current_time()
        batches = await drain(ReplayQuoteFeed.sample(speed=speed), Subscriptions.quotes(SYMBOLS))
        elapsed = trio.current_time() - start
    assert elapsed == pytest.approx(span_s / speed, abs=1e-6)
    assert sum(len(b) for b in batches) == sum(len(e) for _, e in frames)


@pytest.mark.parametrize("speed", [0.0, float("inf")])
async def test_as_fast_as_possible(speed: float) -> None:
    with trio.fail_after(GUARD_S):
        start = trio.current_time()
        batches = await drain(ReplayQuoteFeed.sample(speed=speed), Subscriptions.quotes(SYMBOLS))
        assert trio.current_time() == start
    assert batches


async def test_same_events_as_the_decoder_stamped_with_the_clock() -> None:
    clock = VirtualClock()
    feed = ReplayQuoteFeed.sample(speed=1.0, now_ns=clock.now_ns)
    received: list[tuple[int, MarketEvent]] = []
    with trio.fail_after(GUARD_S):
        async with feed.connect() as session:
            await session.subscribe(Subscriptions.quotes(SYMBOLS))
            with pytest.raises(FeedDisconnected):
                async for batch in session.events():
                    received.extend((clock.now_ns(), e) for e in batch)
    expected = [e for _, events in recorded() for e in events]
    assert [e._replace(ts_received_ns=0) for _, e in received] == expected  # type: ignore[union-attr]
    assert all(e.ts_received_ns == now for now, e in received)
    assert feed.stats.messages["success"] == 2  # control frames decoded, not yielded
    assert feed.stats.messages["subscription"] == 1
    assert feed.stats.decode_errors == {}


async def test_only_confirmed_symbols_and_channels() -> None:
    feed = ReplayQuoteFeed.sample(speed=0)
    states: list[ConnectionState] = []
    with trio.fail_after(GUARD_S):
        async with feed.connect(states.append) as session:
            ack = await session.subscribe(Subscriptions.quotes({"AAPL", "NOPE"}))
            assert ack.confirmed == Subscriptions.quotes({"AAPL", "NOPE"})
            assert ack.missing == frozenset()
            await session.subscribe(Subscriptions({Channel.TRADES: frozenset({"MSFT"})}))
            events = session.events()
            first = await events.__anext__()
            assert {e.symbol for e in first} == {"AAPL"}
            ack = await session.unsubscribe(Subscriptions.quotes({"AAPL", "NOPE"}))
            assert ack.confirmed == Subscriptions({Channel.TRADES: frozenset({"MSFT"})})
            with pytest.raises(FeedDisconnected, match="end of recording"):
                await events.__anext__()  # nothing confirmed is in the rest of the file
    assert states == [ConnectionState.CONNECTING, ConnectionState.AUTHENTICATING]


async def test_loop_starts_over() -> None:
    per_pass = sum(len(e) for _, e in recorded())
    feed = ReplayQuoteFeed.sample(speed=0, loop=True)
    seen = 0
    with trio.fail_after(GUARD_S):
        async with feed.connect() as session:
            await session.subscribe(Subscriptions.quotes(SYMBOLS))
            async for batch in session.events():
                seen += len(batch)
                if seen > 2 * per_pass:
                    break
    assert seen > 2 * per_pass


async def test_bad_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    good = orjson.dumps(
        {"t": 5, "text": '[{"T":"q","S":"AAPL","bp":1,"ap":2,"t":"2024-07-24T07:56:53Z"}]'}
    )
    path = tmp_path / "r.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join([good, b"not json", b'{"t":"x","text":"[]"}', b"", b'{"t":1,"b64":"!!"}',
                            b'{"t":6,"text":"[{\\"T\\":\\"q\\"}]"}', good]))  # fmt: skip
    feed = ReplayQuoteFeed(path, speed=0)
    batches = await drain(feed, Subscriptions.quotes({"AAPL"}))
    assert [[e.symbol for e in b] for b in batches] == [["AAPL"], ["AAPL"]]
    assert feed.stats.decode_errors == {"bad_recording_line": 3, "missing_field": 1}


async def test_a_missing_file_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ReplayQuoteFeed(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError):
        ReplayQuoteFeed.sample(speed=-1)


async def test_a_closed_session_refuses_changes() -> None:
    async with ReplayQuoteFeed.sample().connect() as session:
        pass
    with pytest.raises(FeedDisconnected):
        await session.subscribe(Subscriptions.quotes({"AAPL"}))


async def test_hold_at_end_keeps_the_session_open_after_the_last_frame() -> None:
    feed = ReplayQuoteFeed(sample_recording(), speed=0, hold_at_end=True)
    symbols = {"AAPL", "MSFT", "SPY", "BRK.B"}
    quotes = 0
    with trio.move_on_after(3600) as scope:  # virtual time: the hold lasts until cancelled
        async with feed.connect() as session:
            await session.subscribe(Subscriptions.quotes(symbols))
            async for batch in session.events():
                quotes += len(batch)
    assert scope.cancelled_caught  # never raised "end of recording"
    assert quotes == 600


async def test_as_if_live_moves_venue_times_to_now_keeping_the_spacing() -> None:
    clock = VirtualClock()
    feed = ReplayQuoteFeed(sample_recording(), speed=1.0, keep_times=False, now_ns=clock.now_ns)
    received: list[MarketEvent] = []
    with trio.fail_after(GUARD_S):
        async with feed.connect() as session:
            await session.subscribe(Subscriptions.quotes(SYMBOLS))
            with pytest.raises(FeedDisconnected):
                async for batch in session.events():
                    received.extend(batch)
    frames = recorded()
    expected = [e for _, events in frames for e in events]
    assert len(received) == len(expected)
    # Each event is as old at receipt as when it was recorded...
    ages = [(rx - e.ts_event_ns) for rx, events in frames for e in events]
    assert [e.ts_received_ns - e.ts_event_ns for e in received] == ages
    # ...so the first is "now" (the recording is months old) and the spacing is the recording's.
    assert abs(received[0].ts_event_ns - received[0].ts_received_ns) < 5 * 10**9
    assert received[-1].ts_event_ns - received[0].ts_event_ns == (
        expected[-1].ts_event_ns - expected[0].ts_event_ns
    )
    quotes = [e for e in received if isinstance(e, Quote)]
    assert len(quotes) == len(received)
    assert [q._replace(ts_event_ns=0, ts_received_ns=0) for q in quotes] == [
        e._replace(ts_event_ns=0) for e in expected if isinstance(e, Quote)
    ]


def _strict_feed(path: Path) -> ReplayQuoteFeed:
    return ReplayQuoteFeed(path, speed=0, hold_at_end=True, strict=True)


async def _play(feed: ReplayQuoteFeed) -> int:
    seen = 0
    with trio.fail_after(GUARD_S):
        async with feed.connect() as session:
            await session.subscribe(Subscriptions.quotes(SYMBOLS))
            async for batch in session.events():
                seen += len(batch)
    return seen


async def test_strict_a_malformed_line_is_fatal_naming_the_file_and_the_line(
    tmp_path: Path,
) -> None:
    good = orjson.dumps(
        {"t": 5, "text": '[{"T":"q","S":"AAPL","bp":1,"ap":2,"t":"2024-07-24T07:56:53Z"}]'}
    )
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([good, b"", b"this is not a recording", good]))
    with pytest.raises(RecordingUnusable) as info:
        await _play(_strict_feed(path))
    message = str(info.value)
    assert f"{path} line 3 is not a recorded frame" in message
    assert message.endswith("check MDS_REPLAY_FILE")


async def test_strict_an_empty_or_unreadable_recording_is_fatal(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n\n")
    with pytest.raises(RecordingUnusable, match="has no frames"):
        await _play(_strict_feed(empty))
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(RecordingUnusable, match=r"cannot read the recording .*plain\.jsonl\.gz"):
        await _play(_strict_feed(not_gzip))
