"""Smoke test of ``mds bench``'s machinery: one tiny configuration, real processes.

Not a measurement (the numbers of a 2 s window on a shared CI machine mean little): it checks
that the harness starts its own Redis, the stream server, the subscriber and the service, reads
sane numbers back, finds no inexact mid and no out-of-order price, and stops everything.
"""

from __future__ import annotations

import pytest

from entrypoints.bench import hop
from entrypoints.bench.cli import check_extras
from entrypoints.bench.floors import thread_hop_floor
from entrypoints.bench.model import Options
from entrypoints.bench.report import markdown
from entrypoints.bench.run import run_bench
from entrypoints.bench.sampling import rss_growth

pytestmark = pytest.mark.e2e


@pytest.mark.bench
def test_bench_measures_the_service_end_to_end() -> None:
    messages: list[str] = []
    opts = Options(
        formats=("msgpack",),
        batches=(10,),
        symbols=(100,),
        rates=(1_000,),
        duration_s=2.0,
        warmup_s=0.5,
        runs=1,
        baseline_modes=(),
        floors=False,
        log=messages.append,
    )
    doc = run_bench(opts)

    results = doc["results"]
    assert [r["error"] for r in results] == [None, None], messages
    unthrottled, paced = results
    assert unthrottled["phase"] == "max" and paced["rate"] == 1_000
    assert unthrottled["throughput"] > 1_000
    assert unthrottled["cpu_us_per_quote"] > 0 and unthrottled["peak_rss_mb"] > 10
    assert paced["sustained"] is True
    assert 0 < paced["p50_ms"] <= paced["p99_ms"] <= paced["max_ms"] < 1_000
    for r in results:
        assert r["exact_violations"] == 0 and r["order_violations"] == 0
        assert r["bad_messages"] == 0 and r["missing"] == 0
        assert r["received"] > 0
    assert unthrottled["rss_window_mb"] is not None
    start_mb, end_mb = unthrottled["rss_window_mb"]
    assert 10 < start_mb <= unthrottled["peak_rss_mb"] and 10 < end_mb <= unthrottled["peak_rss_mb"]
    assert "| mds | msgpack | 10 | 100 |" in markdown(doc)


def test_bench_http_flood_phase_measures_price_latency_under_the_flood() -> None:
    """``--http-flood N``: each fixed rate again while N connections hammer /prices/<symbol>;
    the row says how many requests the flood got answered and what share were 503."""
    messages: list[str] = []
    opts = Options(
        formats=("msgpack",),
        batches=(10,),
        symbols=(100,),
        rates=(1_000,),
        duration_s=2.0,
        warmup_s=0.5,
        runs=1,
        baseline_modes=(),
        floors=False,
        http_flood=16,
        log=messages.append,
    )
    doc = run_bench(opts)
    results = doc["results"]
    assert [r["error"] for r in results] == [None, None, None], messages
    flooded = results[-1]
    assert flooded["phase"] == "1,000/s + HTTP flood 16" and flooded["http_flood"] == 16
    assert flooded["http_rps"] > 0 and 0 <= flooded["http_503_share"] <= 1
    assert flooded["received"] > 0 and flooded["order_violations"] == 0
    assert "+ HTTP flood 16 (" in markdown(doc)


def test_thread_hop_floor_is_measured_in_a_fresh_process() -> None:
    hop = thread_hop_floor(200.0, 0.25)
    assert hop is not None
    assert hop["rate"] == 200.0 and 20 <= hop["n"] <= 60  # paced: ~50 hops in 0.25 s
    assert 0 < hop["hot_p50_us"] < 100_000
    assert 0 < hop["p50_us"] <= hop["p99_us"] <= hop["p99_9_us"] < 1_000_000


def test_bench_hop_refuses_a_rate_of_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        hop.main(["--rate", "0"])
    assert info.value.code == 2
    assert "--rate and --seconds must be > 0" in capsys.readouterr().err


def test_rss_growth_takes_the_median_of_each_edge_of_the_window() -> None:
    mb = 2**20
    samples = [(t / 10, (50 + (t % 3)) * mb) for t in range(0, 101)]  # 10 s, 50-52 MB jitter
    samples[5] = (0.5, 400 * mb)  # one outlier at the start is not the start
    assert rss_growth(samples, 0.0, 10.0) == (51.0, 51.0)
    grown = [(t, rss + (30 * mb if t > 9.0 else 0)) for t, rss in samples]
    start, end = rss_growth(grown, 0.0, 10.0) or (0.0, 0.0)
    assert start == 51.0 and end == 81.0
    assert rss_growth(samples, 20.0, 30.0) is None  # no sample in the window


def test_without_alpaca_py_the_baseline_is_left_out_in_one_line() -> None:
    messages: list[str] = []
    opts = Options(baseline_modes=("naive", "batched"), log=messages.append)
    checked, problem = check_extras(opts, has=lambda name: name != "alpaca")
    assert problem is None and checked.baseline_modes == ()
    assert len(messages) == 1 and "pip install -e '.[bench]'" in messages[0]
    assert "alpaca-py is not installed" in messages[0]
    same, _ = check_extras(opts, has=lambda name: True)
    assert same.baseline_modes == ("naive", "batched") and len(messages) == 1


def test_without_psutil_nothing_runs_and_the_line_says_what_to_install() -> None:
    _, problem = check_extras(Options(), has=lambda name: name != "psutil")
    assert problem is not None and "pip install -e '.[bench]'" in problem
