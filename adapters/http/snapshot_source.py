"""SnapshotSource over Alpaca's market-data REST API: the latest quotes (the initial image).

- Stocks ``GET {base}/v2/stocks/quotes/latest?symbols=A,B&feed=iex|sip``, crypto
  ``GET {base}/v1beta3/crypto/us/latest/quotes?symbols=BTC/USD,...``, options
  ``GET {base}/v1beta1/options/quotes/latest?symbols=...&feed=indicative|opra``; the answer is
  ``{"quotes": {"SYM": {"bp", "ap", "bs", "as", "bx", "ax", "t", "c", "z"}}}``.
- Symbols are batched (``batch_size``, 100: the options endpoint's limit) and every GET takes a
  token from one bucket (``max_calls_per_minute``, default 100 of Alpaca's 200 a minute, which
  the trading on the same keys shares), burst 5.
- Every GET has a deadline (``timeout_s``) owned by this code, the whole answer included.
- Errors, classified here: timeouts, connection errors, 5xx and malformed answers skip the batch
  (counted in ``stats``); 401/403 skip it too and are logged once (the keys are the stream's,
  whose own check is fatal); 429 skips it and holds every call for ``Retry-After`` (else 10 s,
  capped at 60 s). Nothing is retried: the next subscribe or reconnect asks again.
- A malformed row (not an object, a price that is not a number, a bad timestamp) is skipped and
  counted; the rest of the answer is used. A symbol absent from the answer is counted as missing.
- Open before use, close after: ``async with source: ...``. Keys never appear in logs.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, Self
from urllib.parse import urlencode

import anyio
import httpx
import orjson

from adapters.http.position_source import safe_url
from domain.assets import AssetClass
from domain.market import Quote
from domain.ratelimit import TokenBucket
from domain.timestamps import parse_rfc3339_ns

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 5.0
DEFAULT_BATCH_SIZE: Final = 100
DEFAULT_CALLS_PER_MINUTE: Final = 100.0
DEFAULT_RATE_LIMIT_WAIT_S: Final = 10.0
MAX_RATE_LIMIT_WAIT_S: Final = 60.0
MAX_BODY_BYTES: Final = 8 * 1024 * 1024

PATHS: Final = {
    AssetClass.US_EQUITY: "/v2/stocks/quotes/latest",
    AssetClass.CRYPTO: "/v1beta3/crypto/us/latest/quotes",
    AssetClass.US_OPTION: "/v1beta1/options/quotes/latest",
}


class _Skip(Exception):
    def __init__(self, reason: str, *, quiet: bool = False) -> None:
        super().__init__(reason)
        self.quiet = quiet  # already logged once (refused credentials): debug from now on


class AlpacaSnapshotSource:
    def __init__(
        self,
        base_url: str,
        key_id: str,
        secret_key: str,
        now_ns: Callable[[], int],
        *,
        stock_feed: str | None = None,
        option_feed: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_calls_per_minute: float = DEFAULT_CALLS_PER_MINUTE,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        if not timeout_s > 0 or batch_size < 1 or not max_calls_per_minute > 0:
            raise ValueError("timeout_s, batch_size and max_calls_per_minute must be > 0")
        self._base = base_url.rstrip("/")
        self._headers = {"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret_key}
        self._now_ns = now_ns
        self._feeds = {AssetClass.US_EQUITY: stock_feed, AssetClass.US_OPTION: option_feed}
        self._timeout_s = timeout_s
        self._batch_size = batch_size
        self._bucket = TokenBucket(max_calls_per_minute / 60.0, burst=5)
        self._hold_until = 0.0  # after a 429: no call before this (anyio time)
        self._client_factory = client_factory or (
            lambda: httpx.AsyncClient(
                follow_redirects=False, headers={"Accept": "application/json"}
            )
        )
        self._client: httpx.AsyncClient | None = None
        self._auth_logged = False
        self.stats: Counter[str] = Counter()

    async def __aenter__(self) -> Self:
        self._client = self._client_factory()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await client.aclose()

    def url(self, asset_class: AssetClass, symbols: Sequence[str]) -> str:
        params = {"symbols": ",".join(symbols)}
        feed = self._feeds.get(asset_class)
        if feed:
            params["feed"] = feed
        return f"{self._base}{PATHS[asset_class]}?{urlencode(params, safe=',/')}"

    async def latest_quotes(self, asset_class: AssetClass, symbols: Sequence[str]) -> list[Quote]:
        out: list[Quote] = []
        wanted = sorted(set(symbols))
        for i in range(0, len(wanted), self._batch_size):
            batch = wanted[i : i + self._batch_size]
            try:
                quotes = await self._fetch(asset_class, batch)
            except _Skip as e:
                self.stats["skipped_symbols"] += len(batch)
                log.log(
                    logging.DEBUG if e.quiet else logging.WARNING,
                    "initial image: %d %s symbols skipped: %s",
                    len(batch),
                    asset_class,
                    e,
                )
                continue
            self.stats["missing_symbols"] += len(set(batch) - {q.symbol for q in quotes})
            out += quotes
        return out

    async def _pace(self) -> None:
        now = anyio.current_time()
        wait = max(self._bucket.wait_s(now), self._hold_until - now)
        if wait > 0:
            self.stats["paced"] += 1
            await anyio.sleep(wait)
        self._bucket.take(anyio.current_time())

    async def _fetch(self, asset_class: AssetClass, batch: list[str]) -> list[Quote]:
        client = self._client
        if client is None:
            raise RuntimeError("AlpacaSnapshotSource: not open; use `async with source:`")
        await self._pace()
        url = self.url(asset_class, batch)
        self.stats["requests"] += 1
        try:
            with anyio.fail_after(self._timeout_s):
                body, status, retry_after = await self._get(client, url)
        except TimeoutError as e:
            self.stats["timeouts"] += 1
            raise _Skip(f"no answer within {self._timeout_s:g} s") from e
        except httpx.HTTPError as e:
            self.stats["errors"] += 1
            raise _Skip(f"{safe_url(url)}: {type(e).__name__}") from e
        if status == 429:
            self.stats["rate_limited"] += 1
            wait = DEFAULT_RATE_LIMIT_WAIT_S if retry_after is None else retry_after
            self._hold_until = anyio.current_time() + min(max(wait, 0.0), MAX_RATE_LIMIT_WAIT_S)
            raise _Skip("rate limited (HTTP 429); holding further calls")
        if status in (401, 403):
            self.stats["refused"] += 1
            if not self._auth_logged:
                self._auth_logged = True
                log.error(
                    "initial image: %s refused the credentials (HTTP %d); check "
                    "ALPACA_API_KEY/ALPACA_SECRET_KEY and the plan (logged once)",
                    safe_url(url),
                    status,
                )
            raise _Skip(f"HTTP {status}", quiet=True)
        if status != 200:
            self.stats["errors"] += 1
            raise _Skip(f"{safe_url(url)}: HTTP {status}")
        return self._parse(body, frozenset(batch))

    async def _get(self, client: httpx.AsyncClient, url: str) -> tuple[bytes, int, float | None]:
        async with client.stream("GET", url, headers=self._headers) as response:
            retry_after: float | None = None
            if response.status_code == 429:
                try:
                    retry_after = float(response.headers.get("Retry-After", ""))
                except ValueError:
                    retry_after = None
            if response.status_code != 200:
                return b"", response.status_code, retry_after
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise _Skip(f"answer larger than {MAX_BODY_BYTES} bytes")
            return bytes(body), 200, None

    def _parse(self, body: bytes, batch: frozenset[str]) -> list[Quote]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            self.stats["errors"] += 1
            raise _Skip("answer is not JSON") from e
        rows = doc.get("quotes") if isinstance(doc, dict) else None
        if not isinstance(rows, dict):
            self.stats["errors"] += 1
            raise _Skip("answer has no 'quotes' object")
        received = self._now_ns()
        out: list[Quote] = []
        for symbol, row in rows.items():
            if symbol not in batch:  # only what was asked for (bounded by the batch)
                continue
            try:
                out.append(_quote(symbol, row, received))
            except (TypeError, ValueError, KeyError):
                self.stats["malformed_rows"] += 1
        return out


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("not a number")
    f = float(value)
    if not math.isfinite(f) or f < 0:
        raise ValueError("not a finite, non-negative number")
    return f


def _quote(symbol: str, row: object, received_ns: int) -> Quote:
    if not isinstance(row, dict):
        raise TypeError("not an object")
    conditions = row.get("c") or ()
    if isinstance(conditions, str):
        conditions = (conditions,)
    return Quote(
        symbol,
        _number(row["bp"]),
        _number(row.get("bs", 0)),
        _number(row["ap"]),
        _number(row.get("as", 0)),
        str(row.get("bx", "")),
        str(row.get("ax", "")),
        tuple(str(c) for c in conditions),
        str(row.get("z", "")),
        parse_rfc3339_ns(str(row["t"])),
        received_ns,
    )
