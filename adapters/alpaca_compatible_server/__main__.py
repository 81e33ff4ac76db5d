"""Command line: ``python -m adapters.alpaca_compatible_server --port 8765 --rate 1000 --batch 10``.

Prints the listening URL (``ws://HOST:PORT``; append an endpoint's path, e.g. ``/v2/iex``) as
one line on stdout once it accepts connections, logs to stderr, and stops cleanly on SIGINT or
SIGTERM (exit status 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from adapters.alpaca_compatible_server.config import (
    DEFAULT_WILDCARD_SYMBOLS,
    Faults,
    ServerConfig,
    SlowClientPolicy,
)
from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer

logger = logging.getLogger("adapters.alpaca_compatible_server")


def _key_pair(text: str) -> tuple[str, str]:
    key, sep, secret = text.partition(":")
    if not sep or not key or not secret:
        raise argparse.ArgumentTypeError("expected KEY:SECRET")
    return key, secret


def _off_if_zero(value: float | None) -> float | None:
    return value if value else None


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` only where it says something: not for flags, unset options,
    or help that already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def build_parser(
    prog: str = "python -m adapters.alpaca_compatible_server",
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "A local Alpaca-compatible market-data stream: random-walk quotes and trades for "
            "the subscribed symbols, JSON or msgpack, with fault injection. Endpoints as "
            "Alpaca's: stocks ws://HOST:PORT/v2/iex, /v2/sip, /v2/delayed_sip, /v2/test "
            "(FAKEPACA only); crypto /v1beta3/crypto/us (BTC/USD); options /v1beta1/indicative "
            "and /v1beta1/opra (msgpack only, OCC symbols); any other path gets HTTP 404. "
            "Prints the URL on stdout."
        ),
        formatter_class=_DefaultsFormatter,
    )
    net = parser.add_argument_group("network and protocol")
    net.add_argument("--host", default="127.0.0.1", help="interface to bind")
    net.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    net.add_argument(
        "--key",
        dest="keys",
        action="append",
        type=_key_pair,
        metavar="KEY:SECRET",
        help="accepted credentials (repeatable); by default any non-empty key and secret",
    )
    net.add_argument("--auth-timeout", type=float, default=10.0, help="seconds to authenticate")
    net.add_argument(
        "--symbol-limit", type=int, default=None, help="max distinct symbols per session (405)"
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--rate", type=float, default=1000.0, help="data messages/s per connection (0: max)"
    )
    data.add_argument("--batch", type=int, default=10, help="messages per frame")
    data.add_argument(
        "--bar-interval", type=float, default=60.0, help="seconds between bars (0: off)"
    )
    data.add_argument(
        "--one-sided", type=float, default=0.01, help="share of one-sided quotes (IEX sends them)"
    )
    data.add_argument("--crossed", type=float, default=0.001, help="share of crossed quotes")
    data.add_argument("--pool-frames", type=int, default=64, help="min pre-encoded frames")
    data.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    data.add_argument(
        "--wildcard-symbols",
        default=None,
        help='comma-separated symbols that "*" streams (default: a dozen large caps)',
    )
    data.add_argument(
        "--slow-client",
        choices=[p.value for p in SlowClientPolicy],
        default=SlowClientPolicy.DROP.value,
        help="when a client lags more than --max-lag: skip frames, or 407 and close",
    )
    data.add_argument("--max-lag", type=float, default=1.0, help="seconds behind schedule")
    data.add_argument(
        "--send-timeout", type=float, default=10.0, help="drop a client blocked this long"
    )
    faults = parser.add_argument_group("fault injection (per connection)")
    faults.add_argument(
        "--drop-after-messages",
        type=int,
        default=None,
        metavar="N",
        help="close the TCP connection abruptly (no close frame) after N data messages",
    )
    faults.add_argument(
        "--drop-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close each TCP connection abruptly this many seconds after it was accepted",
    )
    faults.add_argument("--drop-with-rst", action="store_true", help="drops send a TCP reset")
    faults.add_argument("--refuse-auth", action="store_true", help="402 to every auth")
    faults.add_argument("--reject-406", action="store_true", help="406 to every auth")
    faults.add_argument("--insufficient-subscription", action="store_true", help="409 at auth")
    faults.add_argument("--http-429", action="store_true", help="HTTP 429 at the upgrade")
    faults.add_argument("--send-407", action="store_true", help="407 slow client, then close")
    faults.add_argument(
        "--malformed-every",
        type=int,
        default=None,
        metavar="N",
        help="inject one malformed frame after every N data frames",
    )
    faults.add_argument("--internal-error", action="store_true", help="500 at auth, then close")
    faults.add_argument("--stall", action="store_true", help="send no data (pings answered)")
    faults.add_argument(
        "--fault-path",
        dest="fault_paths",
        action="append",
        metavar="PATH",
        help="apply the faults only on this endpoint (repeatable), e.g. /v1beta1/opra",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    wildcard = DEFAULT_WILDCARD_SYMBOLS
    if args.wildcard_symbols:
        wildcard = tuple(s.strip().upper() for s in args.wildcard_symbols.split(",") if s.strip())
    return ServerConfig(
        host=args.host,
        port=args.port,
        keys=dict(args.keys) if args.keys else None,
        auth_timeout_s=args.auth_timeout,
        symbol_limit=args.symbol_limit,
        rate=_off_if_zero(args.rate),
        batch=args.batch,
        bar_interval_s=_off_if_zero(args.bar_interval),
        one_sided_probability=args.one_sided,
        crossed_probability=args.crossed,
        pool_frames=args.pool_frames,
        seed=args.seed,
        slow_client=SlowClientPolicy(args.slow_client),
        max_lag_s=args.max_lag,
        send_timeout_s=args.send_timeout,
        faults=Faults(
            drop_after_messages=args.drop_after_messages,
            drop_every_s=args.drop_every,
            drop_with_rst=args.drop_with_rst,
            refuse_auth=args.refuse_auth,
            reject_connections_with_406=args.reject_406,
            insufficient_subscription=args.insufficient_subscription,
            http_429_at_upgrade=args.http_429,
            send_407_then_close=args.send_407,
            malformed_every=args.malformed_every,
            internal_error=args.internal_error,
            stall=args.stall,
            paths=frozenset(args.fault_paths) if args.fault_paths else None,
        ),
        wildcard_symbols=wildcard,
    )


async def serve(config: ServerConfig) -> None:
    """Run the server until SIGINT or SIGTERM; print the URL once it accepts connections."""
    server = AlpacaCompatibleServer(config)
    # Receive the signals before announcing the URL: a supervisor may signal right after.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            sys.stdout.write(server.url + "\n")
            sys.stdout.flush()
            async for signum in signals:
                logger.info("%s received: stopping", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()


def main(
    argv: Sequence[str] | None = None, prog: str = "python -m adapters.alpaca_compatible_server"
) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    trio.run(serve, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
