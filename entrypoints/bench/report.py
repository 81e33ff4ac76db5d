"""Output: the rich tables and the Markdown block for the README."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from entrypoints.bench.model import Machine


def num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _other_load(row: dict[str, Any]) -> float | None:
    """Cores used by processes outside the benchmark (clock skew can make it dip below 0)."""
    value = (row.get("cpu_share") or {}).get("others")
    return None if value is None else max(0.0, value)


def _cpu_shares(row: dict[str, Any]) -> str:
    s = row.get("cpu_share") or {}
    keys = ("process", "server", "redis", "subscriber")
    return "/".join([*(num(s.get(k), 2) for k in keys), num(_other_load(row), 2)])


def rss_window_text(rss: Sequence[float] | None) -> str:
    return "" if rss is None else f" (window {rss[0]:.1f} -> {rss[1]:.1f})"


def _rss_window(row: dict[str, Any]) -> str:
    rss = row.get("rss_window_mb")
    return "-" if rss is None else f"{rss[0]:.1f} → {rss[1]:.1f}"


def _violations(row: dict[str, Any]) -> str:
    return f"{row['exact_violations']}/{row['order_violations']}"


THROUGHPUT_COLUMNS: Final = ("impl", "format", "batch", "symbols", "prices/s out", "quotes/s in",
                             "CPU us/quote", "peak RSS MB", "RSS MB window start → end",
                             "conflated", "missing", "inexact/disorder",
                             "cores: svc/srv/redis/sub/other")  # fmt: skip


LATENCY_COLUMNS: Final = ("impl", "format", "batch", "symbols", "rate", "prices/s out",
                          "p50 ms", "p99 ms", "p99.9 ms", "CPU us/quote", "peak RSS MB",
                          "inexact/disorder", "sustained", "other load")  # fmt: skip


_SUSTAINED: Final = {True: "yes", False: "NO", None: "-"}


def _rate(r: dict[str, Any]) -> str:
    """The rate cell; under an HTTP flood, with what the flood got answered."""
    text = f"{r['rate']:,}"
    if not r.get("http_flood"):
        return text
    rps, busy = r.get("http_rps"), r.get("http_503_share")
    got = f"{num(rps)} req/s" if rps is not None else "? req/s"
    if busy is not None:
        got += f", {busy:.0%} 503"
    return f"{text} + HTTP flood {r['http_flood']} ({got})"


def table_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[list[str]], list[list[str]]]:
    throughput: list[list[str]] = []
    latency: list[list[str]] = []
    for r in rows:
        head = [r["impl"], r["fmt"], str(r["batch"]), str(r["symbols"])]
        if r["errors"] and not r["runs"]:
            err = "ERROR: " + r["errors"][0][:60]
            if r["rate"] == 0:
                throughput.append([*head, err])
            else:
                latency.append([*head, f"{r['rate']:,}", err])
            continue
        if r["rate"] == 0:
            throughput.append([
                *head, num(r["throughput"]), num(r["quotes_in"]), num(r["cpu_us_per_quote"], 1),
                num(r["peak_rss_mb"]), _rss_window(r), str(r["conflated"]), str(r["missing"]),
                _violations(r), _cpu_shares(r),
            ])  # fmt: skip
        else:
            latency.append([
                *head, _rate(r), num(r["throughput"]), num(r["p50_ms"], 2),
                num(r["p99_ms"], 2), num(r["p999_ms"], 2), num(r["cpu_us_per_quote"], 1),
                num(r["peak_rss_mb"]), _violations(r), _SUSTAINED[r["sustained"]],
                num(_other_load(r), 2),
            ])  # fmt: skip
    return throughput, latency


def ratio_rows(ratio_list: Sequence[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in ratio_list:
        if "throughput" in r:
            what = (f"throughput {num(r['throughput'], 1)}x, "
                    f"CPU per quote {num(r['cpu_per_quote'], 1)}x lower")  # fmt: skip
        elif "p50_ms" in r:
            what = (f"latency baseline/mds: p50 {num(r['p50_ms'], 2)}, p99 {num(r['p99_ms'], 2)}, "
                    f"p99.9 {num(r['p999_ms'], 2)} (>1: mds is faster)")  # fmt: skip
        else:
            what = r.get("note", "-")
        out.append([r["baseline"], str(r["batch"]), str(r["symbols"]), r["phase"], what])
    return out


RATIO_COLUMNS: Final = ("mds (msgpack) vs", "batch", "symbols", "phase", "mds against it")


def markdown(doc: dict[str, Any]) -> str:
    """The Markdown block for the README: the machine, the tables, the floors."""
    machine = Machine(**{**doc["machine"], "load_before": tuple(doc["machine"]["load_before"])})
    opts = doc["options"]
    thr, lat = table_rows(doc["medians"])
    lines = [
        f"Machine: {machine.describe()}.",
        f"`mds bench` (code {doc.get('code', 'unknown')}): medians of {opts['runs']} run(s), "
        f"{opts['duration_s']:g} s windows after {opts['warmup_s']:g} s warm-up; server "
        f"`--rate 0` for throughput.",
        "",
    ]

    def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines.extend("| " + " | ".join(row) + " |" for row in rows)
        lines.append("")

    if thr:
        table(THROUGHPUT_COLUMNS, thr)
    if lat:
        table(LATENCY_COLUMNS, lat)
    if doc["ratios"]:
        table(RATIO_COLUMNS, ratio_rows(doc["ratios"]))
    lines += [
        "Prices/s out: received by a Redis pattern subscriber; quotes/s in: handled by the "
        "process. CPU per quote: the process's user+sys CPU over the window / quotes handled. "
        "Latency: the stream server's send time (the quote's `t`) to the subscriber's receipt. "
        "Cores: CPU used over the window by the process under test, the stream server, Redis, "
        "the subscriber, and everything else on the machine (other load: anything above ~0.2 "
        "means the numbers were disturbed). inexact: published mids that are not the exact "
        "decimal midpoint; disorder: a price older than the previous one of its symbol.",
        "",
    ]
    floors = doc.get("floors")
    if floors:
        sub = floors.get("subscriber", {})
        feed = "; ".join(
            f"{k}: raw socket {num(v.get('raw'))}, trio-websocket {num(v.get('ws'))}"
            for k, v in floors.get("feed", {}).items()
        )
        lines.append(
            f"Harness floors: the subscriber takes {num(sub.get('throughput'))} prices/s "
            f"(pipelined PUBLISH, cores sub/redis/pub "
            f"{'/'.join(num(v, 2) for v in (sub.get('cpu_share') or {}).values())}); "
            f"stream server to a receive-only client (quotes/s): {feed}."
        )
        for key, floor in floors.items():
            if key.startswith("latency@") and floor.get("latency_ms"):
                lat = floor["latency_ms"]
                pipeline = floor.get("pipeline")
                lines.append(
                    f"Latency floor, PUBLISH -> subscriber at {floor['rate']:,}/s without the "
                    + (f"service (pipelines of {pipeline}): " if pipeline else "service: ")
                    + f"p50 {num(lat.get('p50'), 2)}, p99 {num(lat.get('p99'), 2)}, "
                    f"p99.9 {num(lat.get('p99.9'), 2)} ms."
                )
        for frame_rate, hop in (floors.get("thread_hop") or {}).items():
            lines.append(
                f"One worker-thread round trip (anyio.to_thread under trio, paced) at "
                f"{frame_rate} frames/s: p50 {num(hop['p50_us'])}, p99 {num(hop['p99_us'])} us "
                f"(back to back {num(hop['hot_p50_us'])} us)."
            )
    return "\n".join(lines) + "\n"


def print_tables(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    thr, lat = table_rows(doc["medians"])
    for title, columns, rows in (
        ("Sustained throughput (server unthrottled)", THROUGHPUT_COLUMNS, thr),
        ("Latency at fixed rates (server send -> subscriber receipt)", LATENCY_COLUMNS, lat),
        ("mds against the hand-written baseline", RATIO_COLUMNS, ratio_rows(doc["ratios"])),
    ):
        if not rows:
            continue
        t = Table(title=title, title_justify="left")
        for col in columns:
            t.add_column(col, justify="left" if col in ("impl", "format") else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)
    for name, spots in (doc.get("profiles") or {}).items():
        t = Table(title=f"py-spy --gil hot spots: {name} (% of samples)", title_justify="left")
        for col in ("self %", "leaf function", "incl. %", "our function (inclusive)", "%", "area"):
            t.add_column(col, justify="right" if "%" in col else "left")
        lists = [spots.get(k) or [] for k in ("self", "ours", "areas")]
        for i in range(max(map(len, lists), default=0)):
            cells: list[str] = []
            for column in lists:
                name_pct = column[i] if i < len(column) else None
                cells += ["", ""] if name_pct is None else [f"{name_pct[1]:.1f}", name_pct[0]]
            t.add_row(*cells)
        console.print(t)
