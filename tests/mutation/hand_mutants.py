# ruff: noqa: E501  (the mutant table is data: one substitution a row reads best unwrapped)
"""Hand-written mutants where mutmut cannot reach: the Lua checked write, Alpaca's error table,
and the behaviours issue 16 found unguarded. Each mutant is one exact text substitution, run
against the tests that own the behaviour; it must make at least one of them fail.

Run: ``.venv/bin/python -m tests.mutation.hand_mutants`` (``scripts/mutation.sh`` runs it after
mutmut). ``--only ID`` runs one mutant, ``--list`` prints the table. The working tree is never
touched: the source is copied to a temporary directory once, and each mutant is applied to the
copy, tested, and reverted. Exit status 1 when a mutant survives or no longer applies (its
original text changed: update the table).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("domain", "ports", "application", "adapters", "entrypoints", "tests", "pyproject.toml")

LUA = "adapters/redis/put_prices.lua"
FEED = "adapters/alpaca/feed.py"
STREAM = "application/stream_prices.py"
PLAN = "domain/subscriptions.py"
MEMORY_CACHE = "adapters/memory/price_cache.py"

CONTRACT = "tests/adapters/contract/test_price_store_contract.py"
REDIS_CACHE = "tests/adapters/redis/test_price_cache.py"
CLUSTER = "tests/adapters/redis/test_cluster.py"
FEED_TESTS = "tests/adapters/alpaca/test_feed.py"
GUARANTEES = "tests/application/test_stream_prices_guarantees.py"
RULES = "tests/domain/test_rules.py"
HEALTH = "tests/entrypoints/test_health_real_view.py"
SUB_ERRORS = "tests/application/test_subscription_errors.py"
KEEP = "application/keep_connected.py"


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


MUTANTS: tuple[Mutant, ...] = (
    # -- the Lua checked write (adapters/redis/put_prices.lua) --------------------------------
    Mutant("lua-equal-refused", LUA, "if current_ts > ts then", "if current_ts >= ts then",
           (CONTRACT,), "a price with the cached timestamp is refused (the later arrival loses)"),
    Mutant("lua-inverted", LUA, "if current_ts > ts then", "if current_ts < ts then",
           (CONTRACT,), "newer refused, older applied"),
    Mutant("lua-no-batch-newest", LUA, "    newest[key] = ts\n    last_applied", "    last_applied",
           (CONTRACT,), "within a batch, a price is checked against the cache only, not against "
           "an earlier price of the same key in the batch"),
    Mutant("lua-first-applied-set", LUA, "    last_applied[key] = i\n",
           "    if last_applied[key] == nil then last_applied[key] = i end\n",
           (CONTRACT,), "the key keeps its first applied price of the batch, not its last"),
    Mutant("lua-no-ttl", LUA, "redis.call('SET', key, ARGV[base + 2 * i - 1], 'PX', ttl)",
           "redis.call('SET', key, ARGV[base + 2 * i - 1])", (CONTRACT,), "no TTL on the key"),
    Mutant("lua-stamp-blind", LUA, "  local stamp = e and string.match(current, '^[^\"]+', e + 1) or ''",
           "  local stamp = ''", (CONTRACT,), "the cached timestamp is never read: always overwritten"),
    Mutant("lua-future-trusted", LUA, "  if stamp > future_limit then return '' end\n", "",
           (CONTRACT, REDIS_CACHE), "a cached price stamped in the future freezes its symbol"),
    Mutant("lua-mget-offset", LUA, "newest[distinct[j]] = stamp_of(values[j - first + 1])",
           "newest[distinct[j]] = stamp_of(values[j - first + 2])", (CONTRACT,),
           "MGET replies matched to the wrong keys (off by one)"),
    Mutant("lua-mget-chunk", LUA, "local last = math.min(first + 999, #distinct)",
           "local last = math.min(first + 998, #distinct)", (CONTRACT,),
           "MGET chunks skip a key at every chunk edge"),
    Mutant("lua-publish-timestamp", LUA, "redis.call('PUBLISH', channel, ARGV[base + 2 * i - 1])",
           "redis.call('PUBLISH', channel, ARGV[base + 2 * i])", (CONTRACT, REDIS_CACHE),
           "publishes the timestamp instead of the price JSON"),
    Mutant("lua-publish-always", LUA, "local publish = ARGV[2] == '1'", "local publish = true",
           (CONTRACT, REDIS_CACHE), "publishes even when the bus will (twice per price)"),
    Mutant("lua-cluster-base", LUA, "  base = 6 + n", "  base = 5 + n", (CLUSTER,),
           "cluster calls read the prices from the wrong arguments"),
    # -- Alpaca's error table (adapters/alpaca/feed.py, _reaction) ----------------------------
    Mutant("alpaca-402-retryable", FEED, "if code == 402:", "if code == -402:",
           (f"{FEED_TESTS}::test_402_is_fatal_and_never_retried",),
           "bad keys become a retryable error (reconnect storm with wrong keys)"),
    Mutant("alpaca-409-retryable", FEED, "if code == 409:", "if code == -409:",
           (f"{FEED_TESTS}::test_409_is_fatal_and_names_the_url_setting",),
           "plan without the feed becomes retryable"),
    Mutant("alpaca-408-411-retryable", FEED, "if code in (408, 411):", "if code in (408,):",
           (f"{FEED_TESTS}::test_other_plan_errors_are_fatal",), "411 becomes retryable"),
    Mutant("alpaca-412-retryable", FEED, "if code == 412:", "if code == -412:",
           (f"{FEED_TESTS}::test_412_stream_needs_msgpack_is_fatal_and_never_retried",),
           "412 (stream needs msgpack) becomes retryable"),
    Mutant("alpaca-406-no-min-delay", FEED, "code=code, min_delay=CONNECTION_LIMIT_MIN_DELAY_S,",
           "code=code,", (f"{FEED_TESTS}::test_406_connection_limit_is_retryable_with_a_minimum_delay",),
           "406 retried at the policy's delay while the old session still holds the slot"),
    Mutant("alpaca-404-fatal", FEED,
           'return FeedUnavailable("auth timeout: not authenticated in time", code=code)',
           'return FatalFeedError("auth timeout: not authenticated in time", code=code)',
           (f"{FEED_TESTS}::test_404_auth_timeout_is_retryable",), "404 auth timeout made fatal"),
    Mutant("alpaca-407-fatal", FEED, 'return FeedDisconnected(\n                "slow client',
           'return FatalFeedError(\n                "slow client',
           (f"{FEED_TESTS}::test_session_errors_end_events_with_feed_disconnected",),
           "407 slow client made fatal"),
    Mutant("alpaca-405-not-limit", FEED,
           'pending.symbols,\n                    code=code, limit_exceeded=True,',
           'pending.symbols,\n                    code=code, limit_exceeded=False,',
           (f"{FEED_TESTS}::test_405_rejects_the_chunk_and_the_session_goes_on",),
           "405 reported as a per-symbol refusal, not the symbol limit"),
    Mutant("alpaca-400-auth-retryable", FEED, "            if code == 400:\n",
           "            if code == -400:\n",
           (f"{FEED_TESTS}::test_400_on_auth_is_fatal_and_the_logged_message_is_redacted",),
           "400 on auth made retryable"),
    Mutant("alpaca-400-410-subscribe-ignored", FEED,
           "            self._answer(SymbolsRejected(reason, pending.symbols, code=code))",
           "            pass", (f"{FEED_TESTS}::test_400_on_subscribe_rejects_those_symbols_and_logs_the_message",
                                f"{FEED_TESTS}::test_410_on_subscribe_rejects_those_symbols_and_the_session_goes_on"),
           "a refused subscribe is never answered (waits for an ack that does not come)"),
    # -- behaviours issue 16 found unguarded ---------------------------------------------------
    Mutant("uc-future-accepted", STREAM,
           "if event.ts_event_ns - event.ts_received_ns > max_skew_ns:", "if False:",
           ("tests/application/test_stream_prices.py",),
           "a quote stamped in the future is priced and freezes its symbol"),
    Mutant("uc-guard-deleted", STREAM, "if last is not None and price.ts_event_ns < last:",
           "if False:", (GUARANTEES,), "the use case's older-over-newer guard deleted"),
    Mutant("uc-equal-refused", STREAM, "if last is not None and price.ts_event_ns < last:",
           "if last is not None and price.ts_event_ns <= last:", (GUARANTEES,),
           "a quote with the same timestamp as the last is refused"),
    Mutant("uc-never-lossless-again", STREAM,
           "            # Caught up: go back to lossless queueing.\n            self._conflating = False\n",
           "", (GUARANTEES,), "conflation never returns to lossless mode"),
    Mutant("uc-conflate-keeps-oldest", STREAM,
           "            if latest.pop(price.symbol, None) is not None:\n                conflated += 1\n"
           "            latest[price.symbol] = price\n",
           "            if price.symbol in latest:\n                conflated += 1\n"
           "                continue\n            latest[price.symbol] = price\n",
           (GUARANTEES,), "conflation keeps the oldest price of a symbol, not the newest"),
    Mutant("uc-put-back-overrides", STREAM,
           "            for price in batch:\n                merged[price.symbol] = price\n"
           "            for price in [*self._queue, *self._latest.values()]:\n"
           "                merged.pop(price.symbol, None)\n                merged[price.symbol] = price\n",
           "            for price in [*self._queue, *self._latest.values()]:\n"
           "                merged[price.symbol] = price\n            for price in batch:\n"
           "                merged.pop(price.symbol, None)\n                merged[price.symbol] = price\n",
           (GUARANTEES,), "a failed batch put back overrides newer pending prices"),
    Mutant("uc-put-back-at-end", STREAM, "            self._queue[:0] = batch",
           "            self._queue.extend(batch)", (GUARANTEES,),
           "a failed batch is retried after newer prices (older written over newer)"),
    Mutant("uc-max-batch-ignored", STREAM, "        if len(self._queue) <= self._max_batch:",
           "        if True:", (GUARANTEES,), "a backlog larger than max_batch goes in one batch"),
    Mutant("plan-left-out-unsorted", PLAN, "left_out = () if capacity is None else tuple(sorted(ranked[capacity:]))",
           "left_out = () if capacity is None else tuple(ranked[capacity:])", (RULES,),
           "left_out in rank order instead of sorted"),
    Mutant("plan-capacity-0-unlimited", PLAN, "keep = ranked if capacity is None else ranked[:capacity]",
           "keep = ranked if not capacity else ranked[:capacity]", (RULES,),
           "capacity 0 read as unlimited"),
    Mutant("change-cut-crashes-sync", KEEP,
           "            except RetryableFeedError as e:\n                log.warning(\"subscription change interrupted",
           "            except SymbolsRejected as e:\n                log.warning(\"subscription change interrupted",
           (SUB_ERRORS,), "a subscription change cut by a drop raises out of the sync"),
    Mutant("refused-symbols-asked-again", KEEP, "status.rejected = status.rejected | e.symbols",
           "status.rejected = status.rejected", (SUB_ERRORS,),
           "symbols the venue refused (400/410) are asked for again at every sync"),
    Mutant("reconnect-subscribes-a-part", KEEP, "await self._subscribe(session, self._ranked)",
           "await self._subscribe(session, self._ranked[:1])", (SUB_ERRORS,),
           "a new session is not subscribed to the whole target"),
    Mutant("health-failed-ignored", "application/status.py",
           "        if self.connection.failed or self.fatal_error is not None:\n            return Health.FAILED",
           "        if False:\n            return Health.FAILED", (HEALTH,), "a fatal error no longer reads FAILED"),
    Mutant("health-standby-degraded", "application/status.py",
           "            return Health.HEALTHY if ok else Health.DEGRADED\n        if not self.connected",
           "            return Health.DEGRADED\n        if not self.connected", (HEALTH,),
           "a healthy standby reads degraded"),
    Mutant("health-store-down-healthy", "application/status.py",
           "if not self.connected or self.store is not StoreState.OK or self.features.failing:",
           "if not self.connected or self.features.failing:", (HEALTH,),
           "a leader with the store down reads healthy"),
    Mutant("ready-on-standby", "entrypoints/view.py",
           "ready = status.role is Role.LEADER and service.streaming()",
           "ready = status.role is Role.STANDBY or service.streaming()", (HEALTH,),
           "a standby reports ready"),
    Mutant("memory-cache-equal-refused", MEMORY_CACHE,
           "if current is not None and price.ts_event_ns < current.ts_event_ns <= limit:",
           "if current is not None and price.ts_event_ns <= current.ts_event_ns <= limit:",
           (GUARANTEES, CONTRACT), "the in-memory cache refuses an equal timestamp"),
)  # fmt: skip


def copy_tree(dest: Path) -> None:
    # Bytecode is copied too (mtimes kept, so it stays valid): only the mutated module recompiles.
    ignore = shutil.ignore_patterns(".hypothesis", "mutants")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def run_one(work: Path, mutant: Mutant) -> tuple[str, str, float]:
    """Apply, test, revert. Returns (verdict, detail, seconds)."""
    target = work / mutant.path
    original = target.read_text()
    count = original.count(mutant.old)
    if count != 1:
        return "stale", f"original text found {count} times in {mutant.path}", 0.0
    target.write_text(original.replace(mutant.old, mutant.new))
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             "--no-header", "-rf", *mutant.tests],
            cwd=work, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        target.write_text(original)
    took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    if proc.returncode == 1:
        failed = re.findall(r"^FAILED (\S+)", out, re.MULTILINE)
        return "killed", failed[0] if failed else "(tests failed)", took
    if proc.returncode == 0:
        return "SURVIVED", "every test passed", took
    return "error", f"pytest exit {proc.returncode}: {out.strip().splitlines()[-1:]}", took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only this mutant id (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.id:34} {m.path:32} {m.what}")
        return 0
    results: list[tuple[Mutant, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="hand-mutants-") as tmp:
        work = Path(tmp)
        copy_tree(work)
        for mutant in chosen:
            verdict, detail, took = run_one(work, mutant)
            results.append((mutant, verdict, detail))
            print(f"{verdict:8} {mutant.id:34} {took:5.1f}s  {detail}", flush=True)
    killed = sum(1 for _, v, _ in results if v == "killed")
    print(f"hand-written mutants: {killed}/{len(results)} killed")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
