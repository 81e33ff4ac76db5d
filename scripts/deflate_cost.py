"""The cost of going without permessage-deflate (RFC 7692), measured on the local server's frames.

Run: ``.venv/bin/python scripts/deflate_cost.py``. For 100 symbols of random-walk quotes, JSON and
msgpack, batch 10 and 100: bytes per quote on the wire uncompressed and deflated as the extension
does it (raw deflate with context takeover, SYNC_FLUSH per message, the 4-byte tail stripped),
and the CPU per quote to inflate, beside the CPU per quote to decode (orjson / msgpack).
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable

import msgpack
import orjson

from adapters.alpaca_compatible_server.frames import JsonCodec, MsgpackCodec
from adapters.alpaca_compatible_server.market import DataParams, MarketData

FRAMES = 2000


def payloads(codec: JsonCodec | MsgpackCodec, batch: int) -> list[bytes]:
    market = MarketData(DataParams(batch, FRAMES, 0.01, 0.001, ("V",)), random.Random(1))
    pool = codec.pool(market.pool_frames([("q", f"S{i:03d}") for i in range(100)]))
    now, last, out = time.time_ns(), 0, []
    for i in range(min(FRAMES, len(pool))):
        (stamp,), last = codec.stamps(now + i * 20_000, 1, last)
        wire = pool.render(i, stamp)
        length = wire[1] & 0x7F
        out.append(wire[2:] if length < 126 else wire[4:] if length == 126 else wire[10:])
    return out


def best_of(runs: int, work: Callable[[], None]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    formats: list[tuple[str, JsonCodec | MsgpackCodec, Callable[[bytes], object]]] = [
        ("json", JsonCodec(), orjson.loads),
        ("msgpack", MsgpackCodec(), msgpack.unpackb),
    ]
    for name, codec, loads in formats:
        for batch in (10, 100):
            frames = payloads(codec, batch)
            quotes = batch * len(frames)
            compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            deflated = [
                (compressor.compress(f) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4] for f in frames
            ]

            def inflate(deflated: list[bytes] = deflated) -> None:
                inflater = zlib.decompressobj(-15)
                for d in deflated:
                    inflater.decompress(d + b"\x00\x00\xff\xff")

            def decode(frames: list[bytes] = frames, loads: Callable[..., object] = loads) -> None:
                for f in frames:
                    loads(f)

            raw_bytes, deflated_bytes = sum(map(len, frames)), sum(map(len, deflated))
            inflate_ns = best_of(5, inflate) / quotes * 1e9
            decode_ns = best_of(5, decode) / quotes * 1e9
            share = 100 * deflated_bytes / raw_bytes
            print(
                f"{name:7} batch {batch:3}: {raw_bytes / quotes:6.1f} B/quote raw, "
                f"{deflated_bytes / quotes:5.1f} deflated ({share:4.1f}%); "
                f"inflate {inflate_ns:5.0f} ns/quote, decode {decode_ns:5.0f} ns/quote"
            )


if __name__ == "__main__":
    main()
