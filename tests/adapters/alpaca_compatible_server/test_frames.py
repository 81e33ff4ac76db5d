"""Pre-encoded frames and the synthetic market, without sockets."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.alpaca_compatible_server.frames import (
    JSON_STAMP_WIDTH,
    JSON_STEP_NS,
    MALFORMED_KINDS,
    MSGPACK_STAMP_WIDTH,
    MSGPACK_STEP_NS,
    JsonCodec,
    MsgpackCodec,
    WireTime,
    frame_header,
)
from adapters.alpaca_compatible_server.market import (
    DataParams,
    Item,
    MarketData,
    closed_walk,
    pool_frame_count,
)
from domain.timestamps import NS_PER_SECOND, format_ns, parse_rfc3339_ns

T = 1_795_626_791 * NS_PER_SECOND


def decode_json(frame: str | bytes) -> Any:
    return orjson.loads(frame)


def decode_msgpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame)


def decode_any(frame: str | bytes) -> Any:
    return orjson.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame)


def params(batch: int = 10, **overrides: Any) -> DataParams:
    values: dict[str, Any] = dict(
        batch=batch,
        pool_frames=8,
        one_sided_probability=0.0,
        crossed_probability=0.0,
        exchanges=("V",),
    )
    values.update(overrides)
    return DataParams(**values)


def items(*symbols: str) -> list[Item]:
    return [("q", s) for s in symbols]


@given(st.integers(min_value=0, max_value=2**34 * NS_PER_SECOND - 1))
def test_msgpack_stamp_is_a_fixed_width_timestamp96_that_round_trips(ts_ns: int) -> None:
    codec = MsgpackCodec()
    head, seconds = codec.stamp(ts_ns)
    for index, count in ((0, 1), (3, 10), (99, 100)):
        wire = codec.render((b"", codec.baked(index, count)), (head, seconds))
        assert len(wire) == MSGPACK_STAMP_WIDTH and wire[:3] == b"\xc7\x0c\xff"
        decoded = msgpack.unpackb(wire)
        assert isinstance(decoded, msgpack.Timestamp)
        base = ts_ns - ts_ns % MSGPACK_STEP_NS
        assert decoded.to_unix_nano() == base + index * MSGPACK_STEP_NS // count


@given(st.integers(min_value=0, max_value=253_402_300_799 * NS_PER_SECOND))
def test_json_stamp_is_fixed_width_rfc3339_that_round_trips(ts_ns: int) -> None:
    codec = JsonCodec()
    stamp = codec.stamp(ts_ns)
    for index, count in ((0, 1), (3, 10), (99, 100)):
        text = codec.render((b"", codec.baked(index, count)), stamp).decode()
        assert len(text) == JSON_STAMP_WIDTH
        base = ts_ns - ts_ns % JSON_STEP_NS
        assert parse_rfc3339_ns(text) == base + index * JSON_STEP_NS // count


def unframe(wire: bytes, opcode: int) -> bytes:
    """The payload of one unmasked, final WebSocket frame; checks the header."""
    assert wire[0] == 0x80 | opcode and not wire[1] & 0x80
    length, start = wire[1] & 0x7F, 2
    if length == 126:
        length, start = int.from_bytes(wire[2:4], "big"), 4
    elif length == 127:
        length, start = int.from_bytes(wire[2:10], "big"), 10
    assert len(wire) == start + length
    return wire[start:]


@pytest.mark.parametrize("batch", [1, 10, 15, 16, 100, 400])
def test_pool_frames_render_with_the_stamp_in_every_message(batch: int) -> None:
    market = MarketData(params(batch), random.Random(1))
    frames = market.pool_frames(items("AAPL", "MSFT", "BRK.B"))
    json, mp = JsonCodec(), MsgpackCodec()
    json_pool, msgpack_pool = json.pool(frames), mp.pool(frames)
    assert len(json_pool) == len(msgpack_pool) == len(frames)
    json_stamps, _ = json.stamps(T, len(frames), 0)
    msgpack_stamps, _ = mp.stamps(T, len(frames), 0)
    last_json = last_msgpack = 0
    for index, expected in enumerate(frames):
        wire_json = json_pool.render(index, json_stamps[index])
        wire_msgpack = msgpack_pool.render(index, msgpack_stamps[index])
        assert len(wire_json) == json_pool.sizes[index]
        assert len(wire_msgpack) == msgpack_pool.sizes[index]
        as_json = decode_json(unframe(wire_json, 0x1).decode())
        as_msgpack = decode_msgpack(unframe(wire_msgpack, 0x2))
        assert len(as_json) == len(as_msgpack) == batch == json_pool.counts[index]
        for m_json, m_msgpack, m in zip(as_json, as_msgpack, expected, strict=True):
            assert {k: v for k, v in m_json.items() if k != "t"} == m
            assert {k: v for k, v in m_msgpack.items() if k != "t"} == m
            assert list(m_json)[-1] == "t"
            # Each message its own time: increasing within the frame and across frames (the
            # messages of one frame are distinct up to 100 (JSON) / 256 (msgpack) per frame),
            # none after the send time T.
            t_json = parse_rfc3339_ns(m_json["t"])
            t_msgpack = m_msgpack["t"].to_unix_nano()
            assert T - 10_000_000 < t_json <= T and T - 10_000_000 < t_msgpack <= T
            assert t_json > last_json or (batch > 100 and t_json == last_json)
            assert t_msgpack > last_msgpack or (batch > 256 and t_msgpack == last_msgpack)
            last_json, last_msgpack = t_json, t_msgpack


@pytest.mark.parametrize(
    ("batch", "count"), [(10, 1), (10, 9), (10, 10), (20, 15), (20, 16), (100, 42), (400, 3)]
)
def test_render_first_cuts_a_frame_to_its_first_messages(batch: int, count: int) -> None:
    market = MarketData(params(batch), random.Random(2))
    frames = market.pool_frames(items("AAPL", "MSFT"))
    for codec, opcode, decode in (
        (JsonCodec(), 1, decode_json),
        (MsgpackCodec(), 2, decode_msgpack),
    ):
        pool = codec.pool(frames)
        stamp = codec.stamp(T)
        full = decode(unframe(pool.render(0, stamp), opcode))
        cut = decode(unframe(pool.render_first(0, count, stamp), opcode))
        assert cut == full[:count]
    with pytest.raises(ValueError):
        JsonCodec().pool(frames).render_first(0, batch + 1, JsonCodec().stamp(T))


def test_templates_need_t_last_or_absent() -> None:
    with pytest.raises(ValueError, match="last key"):
        JsonCodec().template([{"T": "q", "t": "x", "S": "AAPL"}])
    with pytest.raises(ValueError, match="last key"):
        MsgpackCodec().template([{"T": "q", "t": "x", "S": "AAPL"}])
    assert JsonCodec().template([{"T": "q", "S": "AAPL", "t": "x"}])  # last: replaced
    with pytest.raises(ValueError):
        JsonCodec().template([])


@pytest.mark.parametrize(
    ("n", "batch", "pool_frames", "expected"),
    [(1, 10, 64, 64), (3, 10, 64, 66), (100, 10, 64, 70), (100, 100, 64, 64), (7, 7, 8, 8)],
)
def test_pool_spans_whole_round_robin_cycles(
    n: int, batch: int, pool_frames: int, expected: int
) -> None:
    frames = pool_frame_count(n, batch, pool_frames)
    assert frames == expected
    assert frames * batch % n == 0 and frames >= pool_frames


def test_a_pool_too_big_for_whole_cycles_still_covers_every_item() -> None:
    # 997 items, 100 per frame: whole cycles would take 99,700 messages.
    frames = pool_frame_count(997, 100, 64)
    assert frames == 64 and frames * 100 >= 997


def test_every_symbol_gets_the_same_share_and_prices_are_sane() -> None:
    symbols = [f"S{i}" for i in range(7)]
    market = MarketData(params(10), random.Random(3))
    frames = market.pool_frames(items(*symbols))
    messages: list[Any] = [m for frame in frames for m in frame]
    counts = Counter(m["S"] for m in messages)
    assert set(counts) == set(symbols) and len(set(counts.values())) == 1
    for m in messages:
        assert 0 < m["bp"] < m["ap"]
        assert round(m["bp"] * 100) == pytest.approx(m["bp"] * 100, abs=1e-9)
        assert 1 <= round((m["ap"] - m["bp"]) * 100) <= 5


@given(st.integers(min_value=1, max_value=500), st.integers(min_value=0, max_value=10**6))
def test_closed_walk_returns_to_its_start(length: int, seed: int) -> None:
    offsets = closed_walk(random.Random(seed), length)
    assert len(offsets) == length and offsets[0] == 0
    steps = [b - a for a, b in zip(offsets, [*offsets[1:], 0], strict=True)]
    assert all(abs(s) <= 2 for s in steps)  # the wrap back to the start is a normal step


def test_one_sided_and_crossed_quotes_on_request() -> None:
    one_sided = MarketData(params(10, one_sided_probability=1.0), random.Random(4))
    for frame in one_sided.pool_frames(items("AAPL")):
        for m in frame:
            assert (m["bp"], m["bs"]) == (0, 0) or (m["ap"], m["as"]) == (0, 0)
    crossed = MarketData(params(10, crossed_probability=1.0), random.Random(4))
    quotes: list[Any] = [m for frame in crossed.pool_frames(items("AAPL")) for m in frame]
    assert all(m["bp"] > m["ap"] for m in quotes)


def test_bars_have_whole_minute_times() -> None:
    bars = MarketData(params(), random.Random(5)).bars(["SPY"], T - T % (60 * NS_PER_SECOND))
    (bar,) = decode_json(JsonCodec().encode(bars))
    assert bar["t"].endswith(":00Z") and len(bar["t"]) == 20
    (packed,) = decode_msgpack(MsgpackCodec().encode(bars))
    assert packed["t"].nanoseconds == 0


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 10**6])
def test_frame_header_lengths(length: int) -> None:
    header = frame_header(0x2, length)
    assert unframe(header + b"x" * length, 0x2) == b"x" * length


def test_wire_time_outside_templates() -> None:
    assert JsonCodec().encode({"t": WireTime(T + 5)}) == f'{{"t":"{format_ns(T + 5)}"}}'
    decoded = decode_msgpack(MsgpackCodec().encode({"t": WireTime(T + 5)}))
    assert decoded["t"].to_unix_nano() == T + 5


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_malformed_frames_are_broken_in_the_named_way(kind: str) -> None:
    for codec in (JsonCodec(), MsgpackCodec()):
        frame = codec.malformed(kind, "AAPL", T)
        if kind == "bad_encoding":
            with pytest.raises(ValueError):
                decode_any(frame)
            with pytest.raises(ValueError):
                codec.decode(frame)
            continue
        value = decode_any(frame)
        if kind == "not_a_list":
            assert isinstance(value, dict) and value["S"] == "AAPL"
            continue
        (message,) = value
        assert message["S"] == "AAPL"
        if kind == "missing_fields":
            assert set(message) == {"T", "S", "t"}
        elif kind == "wrong_types":
            assert isinstance(message["bp"], str) and message["ax"] is None
        else:
            assert message["T"] == "zz"
