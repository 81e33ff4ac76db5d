"""Smoke test of ``mds bench``'s machinery: one tiny configuration, real processes.

Not a measurement (the numbers of a 2 s window on a shared CI machine mean little): it checks
that the harness starts its own Redis, the stream server, the subscriber and the service, reads
sane numbers back, finds no inexact mid and no out-of-order price, and stops everything.
"""

from __future__ import annotations

import pytest

from entrypoints.bench import Options, markdown, run_bench

pytestmark = pytest.mark.e2e


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
    assert "| mds | msgpack | 10 | 100 |" in markdown(doc)
