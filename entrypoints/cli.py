"""``mds``: the one console command. ``mds COMMAND --help`` documents each command.

- ``run``            the service (the same as ``python entrypoints/service.py``)
- ``stream-server``  the local Alpaca-compatible stream server (paper mode, tests, benchmarks)
- ``record``         record a live stream's raw frames to a file, the input of replay mode
- ``replay``         run the service on a recording (``MDS_FEED=replay``)
- ``price``          the cached prices of some symbols, from Redis, with age and staleness
- ``watch``          a live terminal table of bid/ask/mid/age from Redis pub/sub
- ``bench``          end-to-end benchmark: the service against alpaca-py + redis.asyncio
- ``chaos``          the chaos soak: random faults against real processes, invariants checked
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

COMMANDS = ("run", "stream-server", "record", "replay", "price", "watch", "bench", "chaos")


def _settings_or_exit() -> object:
    from entrypoints.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as e:
        print(f"mds: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_record(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mds record",
        description=(
            "Record the raw frames of an Alpaca(-compatible) stream to FILE (JSON lines with the "
            "receive time; gzip when FILE ends in .gz). Uses ALPACA_STREAM_URL, ALPACA_API_KEY, "
            "ALPACA_SECRET_KEY and ALPACA_STREAM_FORMAT. Replay it with `mds replay FILE`."
        ),
    )
    parser.add_argument("file", help="output file (.jsonl or .jsonl.gz)")
    parser.add_argument("symbols", nargs="+", help="symbols to subscribe (quotes)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to record")
    args = parser.parse_args(argv)

    import dataclasses
    from pathlib import Path

    import anyio

    from adapters.alpaca.feed import AlpacaQuoteFeed, record_stream
    from domain.errors import FeedError
    from domain.market import Subscriptions
    from domain.symbols import normalize_symbol
    from entrypoints.container import alpaca_feed_config
    from entrypoints.settings import Settings

    settings = _settings_or_exit()
    assert isinstance(settings, Settings)
    if not settings.has_alpaca_keys:
        print("mds record: set ALPACA_API_KEY and ALPACA_SECRET_KEY", file=sys.stderr)
        return 2
    config = dataclasses.replace(alpaca_feed_config(settings), record_path=Path(args.file))
    symbols = {normalize_symbol(s) for s in args.symbols}

    async def main() -> None:
        stats = await record_stream(
            AlpacaQuoteFeed(config), Subscriptions.quotes(symbols), args.seconds
        )
        print(f"recorded {stats.frames} frames ({sum(stats.messages.values())} messages)")

    out = Path(args.file)
    existed = out.exists()
    try:
        anyio.run(main, backend="trio")
    except FeedError as e:
        if not existed and not _has_frames(out):
            out.unlink(missing_ok=True)  # a failed connect leaves no empty recording behind
        print(f"mds record: {e}", file=sys.stderr)
        return 3
    return 0


def _has_frames(path: object) -> bool:
    from pathlib import Path

    from adapters.alpaca.recorder import read_recording

    assert isinstance(path, Path)
    try:
        return path.exists() and any(True for _ in read_recording(path))
    except (OSError, EOFError):
        return False


def cmd_replay(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mds replay",
        description="Run the service on a recording (sets MDS_FEED=replay and MDS_REPLAY_FILE).",
    )
    parser.add_argument("file", nargs="?", help="the recording (default: the bundled sample)")
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        help="speed factor: 1 real time, 10 ten times faster, 0 as fast as possible",
    )
    parser.add_argument(
        "--keep-times",
        action="store_true",
        help="keep the recorded venue times (default: as if live, shifted to now)",
    )
    args = parser.parse_args(argv)
    os.environ["MDS_FEED"] = "replay"
    if args.keep_times:
        os.environ["MDS_REPLAY_KEEP_TIMES"] = "true"
    if args.file:
        os.environ["MDS_REPLAY_FILE"] = args.file
    if args.speed is not None:
        os.environ["MDS_REPLAY_SPEED"] = str(args.speed)
    from entrypoints.service import main

    return main([])


def _reader_from_settings() -> object:
    from adapters.redis import PriceReader
    from entrypoints.settings import Settings

    settings = _settings_or_exit()
    assert isinstance(settings, Settings)
    if settings.redis_mode == "memory":
        print(
            "mds: set REDIS_URL (the service's Redis) to read prices; a service without Redis "
            "keeps them in its own process: ask its HTTP API (e.g. curl "
            "'http://127.0.0.1:8000/prices?symbols=AAPL,MSFT', or /prices/stream for live "
            "updates) or read its log, which shows a few prices every 5 s",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return PriceReader(
        settings.redis_url or "redis://",
        mode={"single": "standalone"}.get(settings.redis_mode, settings.redis_mode),
        sentinels=[str(s) for s in settings.redis_sentinels],
        master_name=settings.redis_master,
        max_age_s=settings.price_ttl_s,
    )


def cmd_price(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mds price",
        description="Print the cached price of each SYMBOL from Redis (REDIS_URL) with its age "
        "and stale flag (stale: older than MDS_PRICE_TTL). Exit 1 if any symbol has no price.",
    )
    parser.add_argument("symbols", nargs="+")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)

    import orjson

    from adapters.redis import PriceReader
    from domain.errors import FatalStoreError, InvalidSymbol
    from domain.symbols import normalize_symbol

    try:
        symbols = [normalize_symbol(s) for s in args.symbols]
    except InvalidSymbol as e:
        print(f"mds price: {e}", file=sys.stderr)
        return 2
    reader = _reader_from_settings()
    assert isinstance(reader, PriceReader)
    with reader:
        try:
            found = reader.get_many_sync(symbols)
        except ConnectionError as e:
            print(f"mds price: Redis unavailable: {e}", file=sys.stderr)
            return 3
        except FatalStoreError as e:
            print(f"mds price: {e}", file=sys.stderr)
            return 2
    for symbol in symbols:
        aged = found.get(symbol)
        if aged is None:
            print(f"{symbol}: no price", file=sys.stderr)
            continue
        p = aged.price
        if args.json:
            obj = orjson.loads(p.to_json())
            obj.update(age_s=round(aged.age_s, 3), stale=aged.stale)
            print(orjson.dumps(obj).decode())
        else:
            flag = "  STALE" if aged.stale else ""
            print(
                f"{symbol:<10} bid {p.bid!r:>12} ask {p.ask!r:>12} mid {p.mid!r:>12} "
                f"age {aged.age_s:8.3f}s  {p.timestamp}{flag}"
            )
    return 0 if len(found) == len(symbols) else 1


def cmd_watch(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mds watch",
        description="A live table of bid/ask/mid/age for SYMBOLs from Redis pub/sub "
        "(price.updated.{SYMBOL}); Ctrl-C to stop.",
    )
    parser.add_argument("symbols", nargs="+")
    args = parser.parse_args(argv)

    import signal
    import time

    import anyio
    from rich.live import Live
    from rich.table import Table

    from adapters.redis import PriceReader, SubscriptionGap
    from domain.errors import FatalStoreError
    from domain.price import Price
    from domain.staleness import AgedPrice
    from domain.symbols import normalize_symbol

    symbols = [normalize_symbol(s) for s in args.symbols]
    reader = _reader_from_settings()
    assert isinstance(reader, PriceReader)
    latest: dict[str, Price] = {}
    counts: dict[str, int] = dict.fromkeys(symbols, 0)

    def table() -> Table:
        t = Table(title="market-data-service prices")
        for col in ("symbol", "bid", "ask", "mid", "age", "updates"):
            t.add_column(col, justify="right")
        now = time.time_ns()
        for s in symbols:
            p = latest.get(s)
            if p is None:
                t.add_row(s, "-", "-", "-", "-", "0")
                continue
            aged = AgedPrice.at(p, now, reader.max_age_s)
            age = f"[red]{aged.age_s:.1f}s[/red]" if aged.stale else f"{aged.age_s:.3f}s"
            t.add_row(s, repr(p.bid), repr(p.ask), repr(p.mid), age, str(counts[s]))
        return t

    async def main() -> None:
        with reader:
            latest.update({s: a.price for s, a in (await reader.get_many(symbols)).items()})
            with Live(table(), refresh_per_second=4) as live:
                async with reader.subscribe(symbols) as updates, anyio.create_task_group() as tg:

                    async def refresh() -> None:
                        while True:
                            await anyio.sleep(0.25)
                            live.update(table())

                    async def stop_on_signal() -> None:
                        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                            async for _ in signals:
                                tg.cancel_scope.cancel()
                                return

                    tg.start_soon(refresh)
                    tg.start_soon(stop_on_signal)
                    while True:
                        try:
                            async for price in updates:
                                latest[price.symbol] = price
                                counts[price.symbol] += 1
                            break
                        except SubscriptionGap as gap:  # one cluster shard re-subscribed
                            again = await reader.get_many(gap.symbols)
                            latest.update({s: a.price for s, a in again.items()})

    try:
        anyio.run(main, backend="trio")
    except BaseException as e:  # a task group wraps the iterator's error: judge the leaf
        leaf = _leaf(e)
        if isinstance(leaf, KeyboardInterrupt):  # Ctrl-C before the signal task listened
            return 0
        if isinstance(leaf, ConnectionError):
            print(f"mds watch: Redis unavailable: {leaf}", file=sys.stderr)
            return 3
        if isinstance(leaf, FatalStoreError):
            print(f"mds watch: {leaf}", file=sys.stderr)
            return 2
        raise
    return 0


def _leaf(error: BaseException) -> BaseException:
    """The single exception inside (nested) exception groups, else ``error`` itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def cmd_chaos(argv: Sequence[str]) -> int:
    from entrypoints.chaos.schedule import CATALOG, SCENES

    parser = argparse.ArgumentParser(
        prog="mds chaos",
        description=(
            "Chaos soak: starts its own redis-server processes (standalone, then an "
            "active/standby pair, then a 3-master cluster, rotating), the local stream server "
            "and the service as real processes, injects a seeded random schedule of faults "
            "(feed, Redis, positions, disk, signals, HA, cluster) and checks invariants all "
            "along. Prints faults by kind, invariant checks and violations; exit 1 on any "
            "violation (with the seed and the schedule to reproduce it). Needs redis-server."
        ),
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run")
    parser.add_argument("--seed", type=int, default=None, help="schedule seed (default: random)")
    parser.add_argument(
        "--block", type=float, default=240.0, help="seconds per scene before the next one"
    )
    parser.add_argument(
        "--scenes", default=",".join(SCENES), help=f"comma-separated, of {', '.join(SCENES)}"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated fault kinds or prefixes (e.g. redis.,feed.stall)",
    )
    parser.add_argument(
        "--include-excluded",
        action="store_true",
        help="also play the kinds left out of the default catalog (see --list)",
    )
    parser.add_argument("--list", action="store_true", help="list the fault catalog and exit")
    args = parser.parse_args(argv)
    if args.list:
        for kind in CATALOG:
            note = f"  (excluded: {kind.excluded})" if kind.excluded else ""
            print(f"{kind.name:<22} scenes {','.join(kind.scenes):<18}{note}")
        return 0

    import random

    from entrypoints.chaos.engine import run_soak
    from entrypoints.chaos.schedule import plan

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    try:
        chosen = plan(
            seed,
            args.minutes * 60,
            block_s=args.block,
            include_excluded=args.include_excluded,
            only=[o for o in args.only.split(",") if o],
            scenes=[s for s in args.scenes.split(",") if s],
        )
    except ValueError as e:
        print(f"mds chaos: {e}", file=sys.stderr)
        return 2
    print(f"mds chaos: seed {seed}, {args.minutes:g} min", flush=True)
    report = run_soak(chosen, echo=lambda line: print(line, flush=True))
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A reader that goes away (`mds --help | head -1`, `mds watch X | head`)
    ends mds quietly with 128 + SIGPIPE, as Unix tools do, not with a BrokenPipeError traceback."""
    try:
        return _dispatch(argv)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # SIGPIPE


def _dispatch(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print((__doc__ or "").replace("``", ""))
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "run":
        from entrypoints.service import main as run_main

        return run_main(rest)
    if command == "stream-server":
        from adapters.alpaca_compatible_server.__main__ import main as server_main

        return int(server_main(rest, prog="mds stream-server") or 0)
    if command == "record":
        return cmd_record(rest)
    if command == "replay":
        return cmd_replay(rest)
    if command == "price":
        return cmd_price(rest)
    if command == "watch":
        return cmd_watch(rest)
    if command == "bench":
        from entrypoints.bench.cli import main as bench_main

        return bench_main(rest)
    if command == "chaos":
        return cmd_chaos(rest)
    print(f"mds: unknown command {command!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
