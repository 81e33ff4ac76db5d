"""The whole run: the plan of targets and phases, medians over runs, ratios against the baseline."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from entrypoints.bench.floors import feed_floor, publish_floor, thread_hop_floor
from entrypoints.bench.model import MDS, REPO, BenchError, Machine, Options, PhaseResult, Target
from entrypoints.bench.phase import run_phase
from entrypoints.bench.processes import Children, RedisProcess
from entrypoints.bench.profiling import hot_spots
from entrypoints.bench.report import num, rss_window_text


def code_version() -> str:
    """The measured code: git commit, ``+dirty`` with uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO, capture_output=True, text=True, timeout=10,
                                check=True)  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def machine_info(redis_version: str) -> Machine:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return Machine(
        nproc=os.cpu_count() or 0,
        cpu_model=model,
        python=platform.python_version(),
        redis=redis_version,
        kernel=platform.release(),
        load_before=os.getloadavg(),
    )


def targets(opts: Options) -> list[Target]:
    out = [
        Target(MDS, fmt, batch, symbols)
        for symbols in opts.symbols
        for batch in opts.batches
        for fmt in opts.formats
    ]
    out += [
        Target(f"alpaca-py/{mode}", "msgpack", batch, symbols)
        for symbols in opts.symbols
        for batch in opts.batches
        for mode in opts.baseline_modes
    ]
    return out


_NUMERIC: Final = ("window_s", "throughput", "quotes_in", "p50_ms", "p99_ms", "p999_ms", "max_ms",
                   "cpu_us_per_quote", "peak_rss_mb", "http_rps", "http_503_share")  # fmt: skip


_SUMMED: Final = ("conflated", "dropped", "refused_older", "missing", "exact_violations",
                  "order_violations", "bad_messages")  # fmt: skip


def medians(results: Sequence[PhaseResult]) -> list[dict[str, Any]]:
    """One row per (target, phase): medians of the measures, sums of the violations."""
    groups: dict[tuple[str, str, int, int, str], list[PhaseResult]] = {}
    for r in results:
        groups.setdefault((r.impl, r.fmt, r.batch, r.symbols, r.phase), []).append(r)
    rows = []
    for (impl, fmt, batch, symbols, phase), group in groups.items():
        ok = [r for r in group if r.error is None]
        row: dict[str, Any] = {"impl": impl, "fmt": fmt, "batch": batch, "symbols": symbols,
                               "phase": phase, "rate": group[0].rate, "runs": len(ok),
                               "http_flood": group[0].http_flood,
                               "errors": [r.error for r in group if r.error]}  # fmt: skip
        for name in _NUMERIC:
            values = [v for r in ok if (v := getattr(r, name)) is not None]
            row[name] = statistics.median(values) if values else None
        for name in _SUMMED:
            row[name] = sum(getattr(r, name) for r in ok)
        shares: dict[str, float] = {}
        for key in ("process", "process-sys", "server", "redis", "subscriber", "machine", "others"):
            values = [r.cpu_share[key] for r in ok if key in r.cpu_share]
            if values:
                shares[key] = statistics.median(values)
        row["cpu_share"] = shares
        windows = [r.rss_window_mb for r in ok if r.rss_window_mb is not None]
        row["rss_window_mb"] = (
            [statistics.median(w[0] for w in windows), statistics.median(w[1] for w in windows)]
            if windows
            else None
        )
        sustained = [r.sustained for r in ok if r.sustained is not None]
        row["sustained"] = all(sustained) if sustained else None
        rows.append(row)
    return rows


def run_bench(opts: Options) -> dict[str, Any]:
    """Run the configured benchmark; returns everything measured (the JSON document). On
    Ctrl-C or SIGTERM it stops every child and returns what was measured (``interrupted``)."""
    logs = Path(tempfile.mkdtemp(prefix="mds-bench-"))
    children = Children(logs)
    results: list[PhaseResult] = []
    out: dict[str, Any] = {"options": _options_json(opts), "logs": str(logs)}
    failed = False
    try:
        redis = RedisProcess(children)
        machine = machine_info(redis.version())
        out["machine"] = asdict(machine)
        out["code"] = code_version()
        opts.log(f"machine: {machine.describe()}; code {out['code']}")
        if opts.floors:
            out["floors"] = _floors(opts, children, redis)
        plan = targets(opts)
        # (rate, flood connections): the unthrottled phase, each fixed rate, and with
        # --http-flood each fixed rate again under the flood (the service only).
        phases = [(0, 0), *((rate, 0) for rate in opts.rates)]
        if opts.http_flood:
            phases += [(rate, opts.http_flood) for rate in opts.rates]
        total = len(plan) * len(phases) * opts.runs
        done = 0
        for run in range(1, opts.runs + 1):
            for target in plan:
                for rate, flood in phases:
                    if flood and target.impl != MDS:
                        continue
                    done += 1
                    r = run_phase(opts, children, redis, target, rate, run, flood=flood)
                    results.append(r)
                    failed |= r.error is not None
                    opts.log(f"[{done}/{total}] run {run} {target.label} {r.phase}: {_brief(r)}")
        if opts.profile_dir is not None:
            out["profiles"] = _profiles(opts, children, redis, plan)
    except KeyboardInterrupt:
        out["interrupted"] = True  # Ctrl-C or SIGTERM: keep what was measured
    finally:
        children.stop_all()
        out["results"] = [asdict(r) for r in results]
        out["medians"] = medians(results)
        out["ratios"] = ratios(out["medians"])
        if failed or opts.keep_logs:
            opts.log(f"process logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    return out


def _floors(opts: Options, children: Children, redis: RedisProcess) -> dict[str, Any]:
    floors: dict[str, Any] = {}
    opts.log("floor: subscriber capacity (pipelined PUBLISH, no service)...")
    try:
        floors["subscriber"] = publish_floor(opts, children, redis)
        opts.log(f"  subscriber takes {floors['subscriber']['throughput']:,.0f} prices/s")
        for rate in opts.rates:
            for batch in opts.batches:
                key = f"latency@{rate}/{batch}"
                floors[key] = publish_floor(opts, children, redis, rate, pipeline=batch)
                floors[key]["pipeline"] = batch
                lat = floors[key]["latency_ms"] or {}
                opts.log(
                    f"floor: Redis pub/sub + subscriber at {rate:,}/s (pipelines of {batch}): "
                    f"p50 {num(lat.get('p50'), 2)} p99 {num(lat.get('p99'), 2)} "
                    f"p99.9 {num(lat.get('p99.9'), 2)} ms"
                )
    except BenchError as e:
        floors.setdefault("subscriber", {"error": str(e)})
        opts.log(f"  ERROR {e}")
    hops: dict[str, dict[str, float]] = {}
    for frame_rate in sorted({rate / batch for rate in opts.rates for batch in opts.batches}):
        hop = thread_hop_floor(frame_rate, max(3.0, opts.duration_s))
        if hop is not None:
            hops[f"{frame_rate:g}"] = hop
            opts.log(
                f"floor: one worker-thread round trip at {frame_rate:g} frames/s: p50 "
                f"{num(hop['p50_us'])} p99 {num(hop['p99_us'])} us (back to back: "
                f"{num(hop['hot_p50_us'])} us)"
            )
    floors["thread_hop"] = hops
    feed: dict[str, dict[str, float | None]] = {}
    for fmt in opts.formats:
        for batch in opts.batches:
            q = feed_floor(fmt, batch, opts.symbols[0], max(2.0, opts.duration_s / 2))
            feed[f"{fmt}/{batch}"] = q
            shown = ", ".join(f"{k} {num(v)}" for k, v in q.items())
            opts.log(f"floor: stream server -> receive-only client, {fmt} batch {batch}: {shown}")
    floors["feed"] = feed
    return floors


def _profiles(opts: Options, children: Children, redis: RedisProcess,
              plan: Sequence[Target]) -> dict[str, Any]:  # fmt: skip
    assert opts.profile_dir is not None
    opts.profile_dir.mkdir(parents=True, exist_ok=True)
    profiles: dict[str, Any] = {}
    rates = [0, *opts.rates[-1:]]  # unthrottled, and the highest fixed rate
    for target in plan:
        if target.impl != MDS:
            continue
        for rate in rates:
            phase = "max" if rate == 0 else str(rate)
            name = f"mds-{target.fmt}-b{target.batch}-s{target.symbols}-{phase}"
            raw = opts.profile_dir / f"{name}.txt"
            opts.log(f"profiling {target.label} at {phase} (py-spy) -> {raw}")
            r = run_phase(opts, children, redis, target, rate, 0, profile=raw)
            spots = hot_spots(raw) if raw.exists() else {}
            profiles[name] = {"throughput_while_profiled": r.throughput, "raw": str(raw),
                              "error": r.error, **spots}  # fmt: skip
    return profiles


def ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """mds (msgpack, as alpaca-py) against each baseline mode, per batch, symbols and phase."""
    index = {(r["impl"], r["fmt"], r["batch"], r["symbols"], r["phase"]): r for r in rows}
    out = []
    for r in rows:
        if not r["impl"].startswith("alpaca-py/"):
            continue
        ours = index.get((MDS, "msgpack", r["batch"], r["symbols"], r["phase"]))
        if ours is None:
            continue
        row: dict[str, Any] = {"baseline": r["impl"], "batch": r["batch"],
                               "symbols": r["symbols"], "phase": r["phase"]}  # fmt: skip
        if r["rate"] == 0:
            row["throughput"] = _ratio(ours["throughput"], r["throughput"])
            row["cpu_per_quote"] = _ratio(r["cpu_us_per_quote"], ours["cpu_us_per_quote"])
        elif ours["sustained"] and r["sustained"]:
            for key in ("p50_ms", "p99_ms", "p999_ms"):
                row[key] = _ratio(r[key], ours[key])  # >1: ours is faster
        elif not r["runs"] or not ours["runs"]:
            row["note"] = "no result (error)"
        else:
            row["note"] = "baseline did not sustain the rate" if ours["sustained"] else "n/a"
        out.append(row)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _brief(r: PhaseResult) -> str:
    if r.error:
        return f"ERROR {r.error}"
    lat = "" if r.p50_ms is None else f" p50 {r.p50_ms:.2f} p99 {r.p99_ms or 0:.2f} ms"
    cpu = "" if r.cpu_us_per_quote is None else f" {r.cpu_us_per_quote:.1f} us/q"
    return (
        f"{r.throughput:,.0f}/s out ({r.quotes_in:,.0f}/s in){lat}{cpu}"
        f" rss {r.peak_rss_mb:.0f} MB{rss_window_text(r.rss_window_mb)} conflated {r.conflated}"
        f" missing {r.missing}"
        f" inexact {r.exact_violations} disorder {r.order_violations}"
    )


def _options_json(opts: Options) -> dict[str, Any]:
    return {
        "formats": list(opts.formats), "batches": list(opts.batches),
        "symbols": list(opts.symbols), "rates": list(opts.rates),
        "duration_s": opts.duration_s, "warmup_s": opts.warmup_s, "runs": opts.runs,
        "baseline_modes": list(opts.baseline_modes), "floors": opts.floors,
        "http_flood": opts.http_flood,
    }  # fmt: skip


def render(doc: dict[str, Any]) -> dict[str, Any]:
    """A saved result document with its medians and ratios recomputed from the raw results."""
    fields = set(PhaseResult.__dataclass_fields__)
    results = [PhaseResult(**{k: v for k, v in r.items() if k in fields}) for r in doc["results"]]
    for r in results:
        r.missing = max(0, r.missing)
    doc = {**doc, "results": [asdict(r) for r in results], "medians": medians(results)}
    doc["ratios"] = ratios(doc["medians"])
    return doc
