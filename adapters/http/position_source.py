"""PositionSource adapters that poll a REST endpoint with httpx (which runs on trio via anyio).

Two sources, one transport:

- :class:`GatewayPositionSource`: the platform's execution gateway (``MDS_POSITIONS_URL``).
- :class:`AlpacaPositionSource`: Alpaca's trading API, ``GET /v2/positions``.

Shared contract (both):

- Open the source before use and close it after: ``async with source: ...``. The httpx client
  lives exactly that long; nothing is created at import or construction time.
- Each :meth:`open_position_symbols` call is one GET with an explicit timeout, retried a bounded
  number of times (``retries``) after timeouts, connection errors, HTTP 5xx and HTTP 429, with a
  short doubling backoff (``anyio.sleep``); a 429 waits what ``Retry-After`` or
  ``X-Ratelimit-Reset`` asks, capped at ``max_retry_wait_s``.
- When the answer cannot be had or is malformed, it raises :class:`PositionSourceError`
  (``raise ... from`` the cause). A failure is never returned as an empty set: an empty set means
  the source really answered "no positions".
- A symbol the source reports in a format Alpaca cannot stream is logged, counted in
  ``skipped_symbols`` and skipped; a malformed row (not an object, no ``symbol``/``qty``, a qty
  that is not a finite number such as ``"NaN"``) is counted in ``skipped_rows`` and skipped.
  The rest of the answer is used; the same problem answered poll after poll is logged once.
  An answer whose rows are all malformed raises (it is unusable, not "no positions").
- ``max_calls_per_minute`` caps the GETs (retries included) with a token bucket (burst 5):
  a call over the cap waits for its turn (``MDS_POSITION_CALLS_PER_MINUTE``).
- Cancellation propagates at once; nothing is left open except the client, which the ``async
  with`` block closes.
- Credentials never appear in messages, logs or reprs; URLs are shown without user-info or query.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Final, Self
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import orjson

from domain.assets import AssetClass, classify, crypto_stream_symbol, parse_asset_class
from domain.errors import InvalidSymbol, PositionSourceError
from domain.ratelimit import TokenBucket
from domain.symbols import validate_symbol

log = logging.getLogger(__name__)

ClientFactory = Callable[[], httpx.AsyncClient]

ALPACA_PAPER_URL: Final = "https://paper-api.alpaca.markets"
ALPACA_LIVE_URL: Final = "https://api.alpaca.markets"

DEFAULT_TIMEOUT_S: Final = 5.0
DEFAULT_RETRIES: Final = 2
DEFAULT_BACKOFF_S: Final = 0.5
MAX_BACKOFF_S: Final = 4.0
DEFAULT_MAX_RETRY_WAIT_S: Final = 10.0
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
_SNIPPET: Final = 200
_SHOWN_SKIPPED: Final = 5


def _default_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        follow_redirects=False,
        headers={"User-Agent": "market-data-service", "Accept": "application/json"},
    )


def safe_url(url: str) -> str:
    """``url`` without user-info, query or fragment: what may be shown in messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix; ``wait_s`` is a server-asked delay."""

    def __init__(self, reason: str, *, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


class _JsonGetter:
    """One GET returning parsed JSON, with timeout, bounded retries and error translation."""

    def __init__(
        self,
        *,
        url: str,
        what: str,
        headers: Mapping[str, str],
        timeout_s: float,
        retries: int,
        backoff_s: float,
        max_retry_wait_s: float,
        max_body_bytes: int,
        client_factory: ClientFactory | None,
        wall_clock: Callable[[], float],
        redact: Iterable[str] = (),
        auth_hint: str | None = None,
        max_calls_per_minute: float | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        if backoff_s < 0 or max_retry_wait_s < 0:
            raise ValueError("backoff_s and max_retry_wait_s must be >= 0")
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError(f"not an http(s) URL: {safe_url(url)!r}")
        self.url = url
        self.what = what
        self._headers = dict(headers)
        self._timeout_s = timeout_s
        self._timeout = httpx.Timeout(timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_retry_wait_s = max_retry_wait_s
        self.max_body_bytes = max_body_bytes
        self._client_factory = client_factory or _default_client
        self._wall_clock = wall_clock
        self._redact = tuple(s for s in redact if s)
        self._auth_hint = auth_hint
        self._client: httpx.AsyncClient | None = None
        # Every GET (retries included) takes a token: calls stay under the cap whatever asks
        # for them (Alpaca's 200 requests a minute are shared with the trading that uses the
        # same keys). A burst of 5 keeps a single sync (and its retries) immediate.
        self._limiter = (
            TokenBucket(
                max_calls_per_minute / 60.0, burst=max(1, min(5, int(max_calls_per_minute)))
            )
            if max_calls_per_minute is not None
            else None
        )
        self.calls = 0

    async def open(self) -> None:
        if self._client is not None:
            raise RuntimeError(f"{self.what}: already open")
        self._client = self._client_factory()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # Closing must finish even while the caller is being cancelled, but not hang.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await client.aclose()

    def _clean(self, text: str) -> str:
        for secret in self._redact:
            text = text.replace(secret, "***")
        text = "".join(ch if ch.isprintable() else " " for ch in text)
        return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"

    async def get_json(self) -> object:
        """The parsed JSON answer; raises :class:`PositionSourceError` after the last attempt."""
        client = self._client
        if client is None:
            raise RuntimeError(f"{self.what}: not open; use `async with source:`")
        attempts = self.retries + 1
        for attempt in range(attempts):
            await self._within_rate()
            try:
                body = await self._attempt_within_deadline(client)
            except _Retry as e:
                if attempt + 1 >= attempts:
                    raise PositionSourceError(
                        f"{self.what} {safe_url(self.url)}: {e.reason} "
                        f"(gave up after {attempts} attempts)"
                    ) from (e.__cause__ or e)
                delay = min(self.backoff_s * 2**attempt, MAX_BACKOFF_S)
                if e.wait_s is not None:
                    delay = max(delay, min(e.wait_s, self.max_retry_wait_s))
                log.debug(  # the outcome is logged once by the caller, not every attempt
                    "%s %s: %s; attempt %d of %d, retrying in %.2f s",
                    self.what,
                    safe_url(self.url),
                    e.reason,
                    attempt + 1,
                    attempts,
                    delay,
                )
                await anyio.sleep(delay)
                continue
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise PositionSourceError(
                    f"{self.what} {safe_url(self.url)}: answer is not JSON ({e})"
                ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    async def _within_rate(self) -> None:
        """Wait for the call cap (``max_calls_per_minute``), then count the call."""
        limiter = self._limiter
        if limiter is not None:
            wait = limiter.wait_s(anyio.current_time())
            if wait > 0:
                log.debug("%s: %.2f s until the call cap allows the next call", self.what, wait)
                await anyio.sleep(wait)
            limiter.take(anyio.current_time())
        self.calls += 1

    async def _attempt_within_deadline(self, client: httpx.AsyncClient) -> bytes:
        # httpx's timeouts bound each phase (connect, each read); this bounds the whole attempt,
        # so a server that drips its answer cannot hold the caller past ``timeout_s``.
        try:
            with anyio.fail_after(self._timeout_s):
                return await self._attempt(client)
        except TimeoutError as e:
            raise _Retry(f"timed out: no complete answer within {self._timeout_s:g} s") from e

    async def _attempt(self, client: httpx.AsyncClient) -> bytes:
        try:
            async with client.stream(
                "GET", self.url, headers=self._headers, timeout=self._timeout
            ) as response:
                status = response.status_code
                if status == 200:
                    return await self._read_capped(response)
                if status == 429:
                    raise _Retry("rate limited (HTTP 429)", wait_s=self._server_wait(response))
                if status >= 500:
                    raise _Retry(f"HTTP {status}")
                detail = await self._error_detail(response)
        except httpx.TimeoutException as e:
            raise _Retry(f"timed out after {self._timeout_s:g} s ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise _Retry(f"cannot reach it ({type(e).__name__}: {self._clean(str(e))})") from e
        except httpx.HTTPError as e:  # e.g. a malformed answer the protocol layer refused
            raise PositionSourceError(
                f"{self.what} {safe_url(self.url)}: HTTP error ({type(e).__name__})"
            ) from e
        if status in (401, 403) and self._auth_hint is not None:
            raise PositionSourceError(
                f"{self.what} {safe_url(self.url)} refused the credentials (HTTP {status}); "
                f"{self._auth_hint}"
            )
        raise PositionSourceError(f"{self.what} {safe_url(self.url)}: HTTP {status}{detail}")

    async def _read_capped(self, response: httpx.Response) -> bytes:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise PositionSourceError(
                    f"{self.what} {safe_url(self.url)}: answer larger than "
                    f"{self.max_body_bytes} bytes"
                )
        return bytes(body)

    async def _error_detail(self, response: httpx.Response) -> str:
        text = b""
        async for chunk in response.aiter_bytes():
            text += chunk
            if len(text) > 4 * _SNIPPET:
                break
        shown = self._clean(text.decode("utf-8", "replace").strip())
        return f": {shown}" if shown else ""

    def _server_wait(self, response: httpx.Response) -> float | None:
        """Seconds the server asks us to wait (``Retry-After``, else ``X-Ratelimit-Reset``)."""
        retry_after = response.headers.get("Retry-After")
        if retry_after is not None:
            try:
                return max(0.0, float(retry_after))
            except ValueError:
                pass
            try:
                when = email.utils.parsedate_to_datetime(retry_after)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - self._wall_clock())
        reset = response.headers.get("X-Ratelimit-Reset")
        if reset is not None:
            try:
                epoch = float(reset)
            except ValueError:
                return None
            if math.isfinite(epoch):
                return max(0.0, epoch - self._wall_clock())
        return None


def _positions(
    items: list[object], what: str, collected: _Collected
) -> Iterator[tuple[dict[str, object], Decimal]]:
    """Each well-formed position object with its quantity. A row that is not an object, lacks
    ``symbol`` or ``qty``, or has a qty that is not a finite number is skipped and noted in
    ``collected.bad_rows``; when there were rows and none was well-formed, raises
    PositionSourceError (the answer as a whole is unusable, never "no positions")."""
    good = 0
    for index, item in enumerate(items):
        where = f"position #{index}"
        try:
            if not isinstance(item, dict):
                raise PositionSourceError(f"{where} is not an object: {_short(item)}")
            if "symbol" not in item or "qty" not in item:
                raise PositionSourceError(f"{where} lacks 'symbol' or 'qty'")
            qty = _qty(item["qty"], where)
        except PositionSourceError as e:
            collected.bad_rows.append(str(e))
            continue
        good += 1
        yield item, qty
    if items and not good:
        raise PositionSourceError(
            f"{what}: none of the {len(items)} position(s) is well-formed "
            f"(first: {collected.bad_rows[0]})"
        )


def _qty(value: object, where: str) -> Decimal:
    """A position quantity from a JSON number or numeric string; raises PositionSourceError."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PositionSourceError(f"{where}: qty is not a number: {_short(value)}")
    try:
        qty = Decimal(value) if not isinstance(value, float) else Decimal(repr(value))
    except InvalidOperation as e:
        raise PositionSourceError(f"{where}: qty is not a number: {_short(value)}") from e
    if not qty.is_finite():
        raise PositionSourceError(f"{where}: qty is not a finite number: {_short(value)}")
    return qty


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


class _Collected:
    """Symbols with non-zero qty and their asset class, the positions with a symbol or class
    we cannot stream, and the malformed rows that were skipped."""

    def __init__(self) -> None:
        self.positions: dict[str, AssetClass] = {}
        self.skipped: list[str] = []
        self.bad_rows: list[str] = []

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(self.positions)

    def add(self, symbol: object, qty: Decimal, asset_class: object = None) -> None:
        """Keep ``symbol`` (in its stream's form) when ``qty`` is non-zero.

        ``asset_class`` is the source's value: absent or None means "by the symbol's shape"; an
        unknown value skips the position (reported), as does an invalid symbol.
        """
        cls: AssetClass | None = None
        if asset_class is not None:
            cls = parse_asset_class(asset_class)
            if cls is None:
                self.skipped.append(f"{_short(symbol)} (unknown asset_class {_short(asset_class)})")
                return
        if cls is AssetClass.CRYPTO and isinstance(symbol, str):
            symbol = crypto_stream_symbol(symbol)  # Alpaca's positions say BTCUSD
        try:
            valid = validate_symbol(symbol)
        except InvalidSymbol as e:
            self.skipped.append(f"{_short(symbol)} ({e.why})")
            return
        if qty != 0:
            self.positions[valid] = cls or classify(valid)


def _shown_list(items: list[str]) -> str:
    more = len(items) - _SHOWN_SKIPPED
    return "; ".join(items[:_SHOWN_SKIPPED]) + (f" … and {more} more" if more > 0 else "")


class _SkipLog:
    """Logs what an answer skipped once per distinct problem, not at every poll: the same bad
    row answered every interval is one warning (the counters still count every occurrence)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._last: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def report(self, collected: _Collected) -> dict[str, AssetClass]:
        seen = (tuple(collected.skipped), tuple(collected.bad_rows))
        if seen != self._last:
            self._last = seen
            if collected.skipped:
                log.warning(
                    "%s: skipped %d position(s) with a symbol Alpaca cannot stream: %s",
                    self.what,
                    len(collected.skipped),
                    _shown_list(collected.skipped),
                )
            if collected.bad_rows:
                log.warning(
                    "%s: skipped %d malformed position row(s), used the rest: %s",
                    self.what,
                    len(collected.bad_rows),
                    _shown_list(collected.bad_rows),
                )
        return dict(collected.positions)


def parse_gateway_positions(body: object, what: str = "positions gateway") -> _Collected:
    """Parse the gateway's answer (shapes: see :class:`GatewayPositionSource`)."""
    items: object = body
    if isinstance(body, dict):
        if "positions" not in body:
            raise PositionSourceError(f"{what}: answer is an object without a 'positions' list")
        items = body["positions"]
    if not isinstance(items, list):
        raise PositionSourceError(
            f"{what}: expected a list of positions or {{'positions': [...]}}, "
            f"got {type(items).__name__}"
        )
    collected = _Collected()
    for item, qty in _positions(items, what, collected):
        collected.add(item["symbol"], qty, item.get("asset_class"))
    return collected


def parse_alpaca_positions(
    body: object,
    asset_classes: frozenset[str] | None,
    what: str = "Alpaca trading API",
) -> _Collected:
    """Parse ``GET /v2/positions`` (see :class:`AlpacaPositionSource`)."""
    if not isinstance(body, list):
        raise PositionSourceError(
            f"{what}: expected a list of positions, got {type(body).__name__}"
        )
    collected = _Collected()
    for item, qty in _positions(body, what, collected):
        asset_class = item.get("asset_class")
        if asset_class is not None and asset_classes is not None:
            skip = asset_class not in asset_classes
        else:
            skip = False
        if skip:
            log.debug("%s: ignoring %s (asset class %r)", what, _short(item["symbol"]), asset_class)
            continue
        collected.add(item["symbol"], qty, asset_class)
    return collected


class _OwnsHttpClient:
    """``async with source:`` opens and closes the source's own httpx client."""

    _http: _JsonGetter

    async def __aenter__(self) -> Self:
        await self._http.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.close()


class GatewayPositionSource(_OwnsHttpClient):
    """Open positions from the platform's execution gateway: ``GET {url}``.

    Accepted answers (HTTP 200, JSON):

    - a list of position objects: ``[{"symbol": "AAPL", "qty": 10}, {"symbol": "TSLA",
      "qty": "-5"}]``
    - an object holding that list: ``{"positions": [...], ...}`` (other keys are ignored).

    Each object needs ``symbol`` and ``qty``; an optional ``asset_class`` (``us_equity``,
    ``crypto``, ``us_option``) routes it to that stream (else the symbol's shape decides; a
    crypto pair may be written ``BTCUSD`` or ``BTC/USD``); other keys are ignored. ``qty`` is a
    JSON number or a numeric string (``"12.5"``); negative means short. A symbol is returned
    when any of its entries has a non-zero qty (entries are not netted: two books long and short
    still need the price). An empty list is a valid "no positions". Symbols must already be in
    Alpaca's format (``BRK.B``, upper case): others are logged and skipped. A malformed entry
    (no ``symbol``/``qty``, a qty that is not a finite number) is skipped and counted; an answer
    that is not JSON, has another shape, or whose entries are all malformed raises
    :class:`PositionSourceError`, as does any HTTP status other than 200 once retries are spent.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_retry_wait_s: float = DEFAULT_MAX_RETRY_WAIT_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        headers: Mapping[str, str] | None = None,
        client_factory: ClientFactory | None = None,
        wall_clock: Callable[[], float] = time.time,
        max_calls_per_minute: float | None = None,
    ) -> None:
        self._http = _JsonGetter(
            url=url,
            what="positions gateway",
            headers=headers or {},
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            max_retry_wait_s=max_retry_wait_s,
            max_body_bytes=max_body_bytes,
            client_factory=client_factory,
            wall_clock=wall_clock,
            redact=(headers or {}).values(),
            max_calls_per_minute=max_calls_per_minute,
        )
        self.skipped_symbols = 0
        self.skipped_rows = 0
        self._skip_log = _SkipLog("positions gateway")

    def __repr__(self) -> str:
        return f"GatewayPositionSource({safe_url(self._http.url)!r})"

    async def open_positions(self) -> dict[str, AssetClass]:
        """Symbols with a non-zero position and their class; see the class docstring."""
        collected = parse_gateway_positions(await self._http.get_json())
        self.skipped_symbols += len(collected.skipped)
        self.skipped_rows += len(collected.bad_rows)
        return self._skip_log.report(collected)

    async def open_position_symbols(self) -> frozenset[str]:
        """The symbols of :meth:`open_positions`."""
        return frozenset(await self.open_positions())


class AlpacaPositionSource(_OwnsHttpClient):
    """Open positions of an Alpaca account: ``GET {base_url}/v2/positions``.

    ``base_url`` is ``https://paper-api.alpaca.markets`` (paper) or
    ``https://api.alpaca.markets`` (live); paper and live keys differ. The keys travel in the
    ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers and nowhere else.

    Alpaca answers a JSON list of Position objects whose numbers are strings
    (``{"symbol": "AAPL", "qty": "5", "side": "long", "asset_class": "us_equity", ...}``).
    A short may carry a negative ``qty`` or ``side: "short"`` with an unsigned one; either way
    the symbol counts when ``qty`` is non-zero. Each keeps its ``asset_class`` (``us_equity``,
    ``crypto``, ``us_option``), which routes it to its stream; crypto pairs come as ``BTCUSD``
    and are returned in the stream's form ``BTC/USD``. Positions whose ``asset_class`` is not in
    ``asset_classes`` (MDS_ASSET_CLASSES) are ignored; ``asset_classes=None`` (the default)
    keeps all three; an unknown class is skipped and reported. HTTP 401/403 raises
    :class:`PositionSourceError` telling the operator to check ALPACA_API_KEY /
    ALPACA_SECRET_KEY (without ever quoting them); 429 is retried after ``Retry-After`` /
    ``X-Ratelimit-Reset`` (capped). Alpaca allows 200 requests a minute per account, shared with
    anything else using the same keys.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        secret_key: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_retry_wait_s: float = DEFAULT_MAX_RETRY_WAIT_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        asset_classes: frozenset[str] | None = None,
        client_factory: ClientFactory | None = None,
        wall_clock: Callable[[], float] = time.time,
        max_calls_per_minute: float | None = None,
    ) -> None:
        if not api_key or not secret_key:
            raise ValueError("AlpacaPositionSource needs both the API key and the secret key")
        self.base_url = base_url.rstrip("/")
        self.asset_classes = asset_classes
        self._http = _JsonGetter(
            url=f"{self.base_url}/v2/positions",
            what="Alpaca trading API",
            headers={"APCA-API-KEY-ID": api_key, "APCA-API-SECRET-KEY": secret_key},
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            max_retry_wait_s=max_retry_wait_s,
            max_body_bytes=max_body_bytes,
            client_factory=client_factory,
            wall_clock=wall_clock,
            redact=(api_key, secret_key),
            auth_hint=(
                "check ALPACA_API_KEY / ALPACA_SECRET_KEY, and that paper keys go with the "
                "paper URL and live keys with the live one (ALPACA_TRADING_URL)"
            ),
            max_calls_per_minute=max_calls_per_minute,
        )
        self.skipped_symbols = 0
        self.skipped_rows = 0
        self._skip_log = _SkipLog("Alpaca trading API")

    def __repr__(self) -> str:
        return f"AlpacaPositionSource({self.base_url!r}, api_key='***', secret_key='***')"

    async def open_positions(self) -> dict[str, AssetClass]:
        """Symbols with a non-zero position and their class; see the class docstring."""
        collected = parse_alpaca_positions(await self._http.get_json(), self.asset_classes)
        self.skipped_symbols += len(collected.skipped)
        self.skipped_rows += len(collected.bad_rows)
        return self._skip_log.report(collected)

    async def open_position_symbols(self) -> frozenset[str]:
        """The symbols of :meth:`open_positions`."""
        return frozenset(await self.open_positions())
