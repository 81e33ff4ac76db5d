"""The consumer's reader, ``clients/python`` (distribution mds-price-reader, module
mds_price_reader): it reads what the service writes, and its wheel installs one top-level name
only, so a consumer's own ``domain``/``adapters``/... packages cannot clash with ours."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import anyio
import pytest
from mds_price_reader import Price, PriceReader, normalize, parse_price

from adapters.redis import RedisConnection, RedisEventBus, RedisPriceCache
from domain.price import Price as ServicePrice
from tests.conditions import wait_for
from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
T0 = 1_700_000_000_123_456_789


def test_parse_price_reads_the_message_and_refuses_what_is_not_one() -> None:
    price = parse_price(ServicePrice("BRK.B", 150.25, 150.27, 150.26, T0, "IEX").to_json())
    assert price.symbol == "BRK.B" and price.mid == 150.26 and price.exchange == "IEX"
    assert price.time_ns() == T0
    assert price.age_s(T0 + 1_500_000_000) == 1.5
    for bad in (b"not json", b"[]", b'{"symbol": "A"}'):
        with pytest.raises(ValueError):
            parse_price(bad)
    assert normalize(" brk.b ") == "BRK.B"
    with pytest.raises(ValueError):
        normalize("A" * 500)


@pytest.mark.redis
async def test_the_reader_gets_and_follows_what_the_service_writes(
    own_redis_server: RedisServer,
) -> None:
    conn = RedisConnection(own_redis_server.url)
    cache = RedisPriceCache(conn)
    bus = RedisEventBus(conn)
    ts = [T0]

    async def newer_price() -> bool:
        ts.append(ts[-1] + 1)  # the service refuses older over newer: each one newer
        applied = await cache.put_many([ServicePrice("AAPL", 1.0, 1.02, 1.01, ts[-1], "IEX")])
        await bus.publish_many(applied)  # as the service's writer does
        return len(received) >= 2

    received: list[Price] = []

    def follow(reader: PriceReader) -> None:
        for price in reader.subscribe(["AAPL"], timeout_s=10.0):
            received.append(price)
            if len(received) == 2:
                return

    try:
        await cache.put_many([ServicePrice("AAPL", 150.25, 150.27, 150.26, T0, "IEX")])
        with PriceReader(own_redis_server.url) as reader:
            got = await anyio.to_thread.run_sync(lambda: reader.get("aapl"))
            assert got is not None and (got.symbol, got.mid, got.exchange) == (
                "AAPL",
                150.26,
                "IEX",
            )
            assert got.time_ns() == T0
            assert await anyio.to_thread.run_sync(lambda: reader.get("MSFT")) is None
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, follow, reader)
                # Publish until the subscription (made in the thread) has seen two.
                await wait_for(newer_price, timeout_s=10.0, step_s=0.05)
        assert len(received) == 2 and received[0].time_ns() < received[1].time_ns()
    finally:
        conn.close()


@pytest.mark.e2e
def test_the_wheel_installs_one_top_level_name_into_a_fresh_venv(tmp_path: Path) -> None:
    """Built by pip as a consumer would, installed into an empty venv: ``mds_price_reader``
    imports there, and nothing named domain, ports, adapters, application or entrypoints is
    installed."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(CLIENT)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheel,) = dist.glob("mds_price_reader-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist() if not name.startswith("mds_price")}
    assert top == set(), top  # only mds_price_reader/ and its .dist-info
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    probe = (
        "import importlib.util, mds_price_reader as m;"
        'print(m.parse_price(b\'{"symbol":"AAPL","bid":1,"ask":3,"mid":2,'
        '"timestamp":"2024-07-24T07:56:53.000000001Z","exchange":"IEX"}\').mid);'
        "print([n for n in ('domain','ports','adapters','application','entrypoints')"
        " if importlib.util.find_spec(n)])"
    )
    out = subprocess.run(
        [str(python), "-c", probe], check=True, timeout=60, capture_output=True, text=True,
        cwd=tmp_path,
    )  # fmt: skip
    assert out.stdout.splitlines() == ["2.0", "[]"]
