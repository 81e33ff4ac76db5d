"""``mds bench``: end-to-end benchmark of the service against the hand-written alternative.

One run starts its own redis-server (free loopback port, never 6379), and for every measured
phase a fresh local Alpaca-compatible stream server, a fast Redis pattern subscriber
(:mod:`entrypoints.bench.subscriber`) and the system under test as a separate process:

- ``mds``: the service itself (``entrypoints/service.py``, MDS_FEED=alpaca, REDIS_URL set);
- ``alpaca-py/naive``, ``alpaca-py/batched`` (and optionally ``alpaca-py/pipeline``):
  alpaca-py's StockDataStream with a redis.asyncio handler (:mod:`entrypoints.bench.baseline`).

Per configuration (format x batch x symbols) it measures three phases: ``max`` (the server
unthrottled: sustained prices/s the subscriber receives over a steady window after a warm-up)
and fixed rates (default 1,000 and 10,000 quotes/s: latency p50/p99/p99.9 from the server's send
time to the subscriber's receipt). For each phase: the process's CPU seconds per quote
(psutil user+sys over the window), its peak RSS (sampled every 100 ms) and its RSS at the start
and at the end of the window (medians of the first and last second: ``--duration 60`` shows
whether memory stays flat under sustained load), the CPU share of the
server, Redis and the subscriber (on a small machine they all compete), conflated prices,
published-but-not-received prices, and the subscriber's checks: inexact mids and per-symbol
order violations (must be 0 for ``mds``). Numbers are medians over ``--runs``.

It also measures the harness's floors, so a result can be read against what the harness itself
can carry: the subscriber's capacity (pipelined PUBLISH load, no service), the latency of Redis
pub/sub plus the subscriber at the fixed rates, and the stream server's throughput to a
receive-only client. Every window also records the CPU used by everything else on the machine
("other load"): on a shared machine that is what disturbs the numbers.

``--profile DIR`` adds, per service configuration, an unmeasured unthrottled phase and one at the
highest fixed rate under ``py-spy record --gil`` (raw files in DIR) and prints the hot spots by
function and by component. ``--render FILE`` prints the tables of a saved result again.

Prints a table (rich), then a Markdown version (with the machine and the git commit) for the
README, and writes all raw and median results as JSON (``--out``). Ctrl-C or SIGTERM stops every
child process and still writes what was measured.

The package, by what each part does: :mod:`~entrypoints.bench.cli` (the command line),
:mod:`~entrypoints.bench.run` (the whole run, medians, ratios), :mod:`~entrypoints.bench.phase`
(one measured phase), :mod:`~entrypoints.bench.processes` (starting and stopping the child
processes), :mod:`~entrypoints.bench.sampling` (CPU and RSS), :mod:`~entrypoints.bench.floors`,
:mod:`~entrypoints.bench.profiling`, :mod:`~entrypoints.bench.report` (tables and Markdown),
:mod:`~entrypoints.bench.model` (options and results); the separate processes it drives are
:mod:`~entrypoints.bench.subscriber`, :mod:`~entrypoints.bench.baseline` and
:mod:`~entrypoints.bench.hop`.
"""
