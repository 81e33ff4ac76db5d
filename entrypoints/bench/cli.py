"""The ``mds bench`` command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Final

from entrypoints import bench
from entrypoints.bench.model import BASELINE_MODES, BenchError, Options
from entrypoints.bench.report import markdown, print_tables
from entrypoints.bench.run import render, run_bench


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(v.strip().replace("_", "")) for v in text.split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not values:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return values

    return parse


def _format(text: str) -> str:
    if text not in ("json", "msgpack"):
        raise ValueError(f"format must be json or msgpack, not {text!r}")
    return text


def _mode(text: str) -> str:
    if text not in BASELINE_MODES:
        raise ValueError(f"baseline mode must be one of {', '.join(BASELINE_MODES)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mds bench",
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--formats", type=_csv(_format), help="json,msgpack (default both)")
    parser.add_argument("--batches", type=_csv(int), help="messages per frame (default 10,100)")
    parser.add_argument("--symbols", type=_csv(int), help="symbol counts (default 100,1000)")
    parser.add_argument("--rates", type=_csv(int),
                        help="fixed rates for latency, quotes/s (default 1000,10000)")  # fmt: skip
    parser.add_argument("--duration", type=float, help="seconds per measured window (10)")
    parser.add_argument("--warmup", type=float, help="seconds discarded before a window (2)")
    parser.add_argument(
        "--runs", type=int, help="runs per configuration, medians (3; 0 with --profile)"
    )
    parser.add_argument(
        "--baseline-modes",
        type=_csv(_mode),
        help="alpaca-py handler modes: naive,pipeline,batched (naive,batched)",
    )
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="measure the service only")  # fmt: skip
    parser.add_argument(
        "--baseline",
        dest="baseline",
        action="store_true",
        default=True,
        help="also measure the hand-written alpaca-py baseline (default)",
    )
    parser.add_argument("--no-floors", dest="floors", action="store_false", default=None,
                        help="skip the harness floors (default with --quick)")  # fmt: skip
    parser.add_argument("--floors", dest="floors", action="store_true",
                        help="measure the harness floors (default without --quick)")  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            "a smoke run: msgpack, batch 10, 100 symbols, 1 run of 3 s windows, no floors "
            "(3 phases for the service, 6 more for the baseline; see README for timings)"
        ),
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also profile the service under max load with py-spy into DIR",
    )
    parser.add_argument(
        "--http-flood",
        type=int,
        default=0,
        metavar="N",
        help="also measure each fixed rate under an HTTP flood: N connections hammering "
        "GET /prices/<symbol> (the service only; shows the price latency the stream keeps "
        "while the API is flooded, MDS_HTTP_MAX_CONCURRENCY)",
    )
    parser.add_argument("--out", type=Path, help="JSON results (default bench-results/<time>.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only print the tables of a saved result"
    )
    return parser


def options_from_args(args: argparse.Namespace) -> Options:
    quick = args.quick

    def pick(value: Any, full: Any, fast: Any) -> Any:
        return value if value is not None else (fast if quick else full)

    modes = pick(args.baseline_modes, ("naive", "batched"), ("naive", "batched"))
    return Options(
        formats=pick(args.formats, ("json", "msgpack"), ("msgpack",)),
        batches=pick(args.batches, (10, 100), (10,)),
        symbols=pick(args.symbols, (100, 1000), (100,)),
        rates=pick(args.rates, (1_000, 10_000), (1_000, 10_000)),
        duration_s=pick(args.duration, 10.0, 3.0),
        warmup_s=pick(args.warmup, 2.0, 1.0),
        runs=pick(args.runs, 3, 1),
        baseline_modes=modes if args.baseline else (),
        floors=pick(args.floors, True, False),
        profile_dir=args.profile,
        keep_logs=args.keep_logs,
        http_flood=args.http_flood,
        log=_stderr_log,
    )


def _stderr_log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


INSTALL_BENCH: Final = ".venv/bin/pip install -e '.[bench]'"


def check_extras(
    opts: Options, has: Callable[[str], bool] = lambda name: find_spec(name) is not None
) -> tuple[Options, str | None]:
    """Before anything starts: without psutil nothing can be measured (an error line); without
    alpaca-py the baseline is left out, said in one line, and the service is measured alone."""
    if not has("psutil"):
        return opts, f"mds bench: psutil is not installed; install the bench extra: {INSTALL_BENCH}"
    if opts.baseline_modes and not has("alpaca"):
        opts.log(
            "mds bench: alpaca-py is not installed, so the alpaca-py baseline is left out "
            f"(measuring the service alone; for the comparison: {INSTALL_BENCH})"
        )
        opts = dataclasses.replace(opts, baseline_modes=())
    return opts, None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = options_from_args(args)
    if opts.runs < (0 if opts.profile_dir else 1) or opts.duration_s <= 0 or opts.warmup_s < 0:
        parser.error("--runs must be >= 1 (0 with --profile), --duration > 0, --warmup >= 0")
    if any(r <= 0 for r in opts.rates):
        parser.error("--rates must be positive (the unthrottled phase always runs)")
    opts, problem = check_extras(opts)
    if problem is not None:
        _stderr_log(problem)
        return 2
    if args.render is not None:
        doc = render(json.loads(args.render.read_text()))
        print_tables(doc)
        sys.stdout.write("\n" + markdown(doc))
        return 0
    out_path = args.out or Path("bench-results") / time.strftime("bench-%Y%m%d-%H%M%S.json")
    try:
        with _sigterm_as_interrupt():
            doc = run_bench(opts)
    except BenchError as e:
        _stderr_log(f"mds bench: {e}")
        return 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if doc.get("machine"):
        print_tables(doc)
        sys.stdout.write("\n" + markdown(doc))
    _stderr_log(f"results written to {out_path}")
    if doc.get("interrupted"):
        _stderr_log("mds bench: interrupted; every child process was stopped")
        return 130
    errors = sum(1 for r in doc["results"] if r["error"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
