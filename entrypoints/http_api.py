"""The HTTP API (FastAPI), served by hypercorn's trio worker inside the service's task group.

Endpoints (all JSON unless noted; every answer carries ``Cache-Control: no-store``):

- ``GET /health``: always 200; the service's state (``status`` healthy | degraded | failed, plus
  connection, Redis, role and counters). For liveness probes and dashboards.
- ``GET /ready``: 200 when the instance is ready (streaming, or a healthy standby), else 503.
- ``GET /prices/{symbol}``: 200 ``{symbol, bid, ask, mid, timestamp, exchange, bid_exchange,
  ask_exchange, age_s, stale}`` (the Redis message plus age; ``exchange`` is the source feed);
  404 when no price is cached; 422 for a malformed symbol. Symbols with ``/`` (``BTC/USD``)
  may be written as is or as ``BTC%2FUSD``.
- ``GET /prices?symbols=AAPL,MSFT``: 200 ``{"prices": {symbol: price...}, "missing": [...]}``;
  repeated ``symbols=`` parameters add up; at most :data:`MAX_SYMBOLS_PER_REQUEST` items;
  422 when empty, too many or any is malformed.
- ``GET /subscriptions``: desired, confirmed and left-out symbols.
- ``POST /subscriptions/sync``: read positions now and resubscribe; 503 when the position
  source fails or this instance cannot sync (standby).
- ``GET /metrics``: Prometheus text format, from the registry given to :func:`create_app`.
- ``GET /prices/stream``: live prices as Server-Sent Events (see :mod:`entrypoints.http_sse`).
- ``GET /``: the live page (one self-contained HTML file, fed by ``/prices/stream`` and
  ``/health``; no CDN, works offline).

**Access** (:class:`HttpOptions`): with a token set, mutating endpoints (``POST``) need
``Authorization: Bearer <token>`` (compared in constant time, never logged); with
``protect="all"`` every endpoint does. Cross-origin callers are allowed only from the configured
origins (CORS headers for ``fetch`` and ``EventSource``).

**Symbol input** is normalised, then validated: surrounding whitespace is stripped and ASCII
letters upper-cased (``aapl`` reads ``AAPL``), then Alpaca's format applies. Non-ASCII input is
refused before upper-casing (``"ß".upper()`` would otherwise become a valid ``SS``). Bad input of
any kind (unicode, control characters, very long strings) gives a 4xx with a short message that
quotes at most the first 32 characters, never a 500.

**Numbers stay exact**: prices are serialised with orjson, which writes the shortest repr that
round-trips (the same digits as Python's ``repr``): a mid of 150.26 is written ``150.26``.
"""

from __future__ import annotations

import hmac
import importlib.resources
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, Protocol

import anyio
import anyio.abc
import orjson
import trio
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from application.price_fanout import PriceFanOut
from domain.errors import InvalidSymbol, PositionSourceError
from domain.staleness import AgedPrice
from domain.symbols import normalize_symbol

log = logging.getLogger(__name__)

MAX_SYMBOLS_PER_REQUEST: Final = 200
_SHOWN_INPUT: Final = 32
_NO_STORE: Final = {"Cache-Control": "no-store"}

HealthStatus = Literal["healthy", "degraded", "failed"]
RedisState = Literal["ok", "degraded", "memory"]
Role = Literal["leader", "standby"]


@dataclass(frozen=True, slots=True)
class HealthInfo:
    """What ``/health`` reports; ``ready`` decides ``/ready``."""

    status: HealthStatus
    websocket_connected: bool
    subscribed_symbols: int
    reconnect_attempts: int
    last_message_time: str | None  # ISO-8601 UTC of the last frame received, None before any
    connection_state: str
    redis: RedisState
    uptime_s: float
    role: Role
    ready: bool
    detail: str | None = None  # why degraded/failed/not ready, for humans
    # Per stream (us_equity, crypto, us_option; "all" for a single feed): state, symbols,
    # counters, and why it is disabled.
    streams: Mapping[str, Mapping[str, object]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubscriptionsInfo:
    """Symbols wanted (positions and MDS_SYMBOLS), confirmed by the venue, and left out over the
    symbol limit; each sorted."""

    desired: Sequence[str]
    confirmed: Sequence[str]
    left_out: Sequence[str]
    rejected: Sequence[str] = ()
    last_sync_error: str | None = None
    unrouted: Sequence[str] = ()  # asset class not streamed (MDS_ASSET_CLASSES)
    streams: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    unconfirmed: Sequence[str] = ()  # subscribed, but left out of the venue's ack


class ServiceView(Protocol):
    """What the API needs from the running service (implemented by the wiring on top of the
    application's status; a fake in tests)."""

    def health(self) -> HealthInfo:
        """The current health; cheap and non-blocking."""
        ...

    async def get_prices(self, symbols: Sequence[str]) -> Mapping[str, AgedPrice]:
        """Cached prices of those ``symbols`` (valid, upper-case) that have one, aged now.
        Raises ``ConnectionError`` when the store cannot be read."""
        ...

    def subscriptions(self) -> SubscriptionsInfo:
        """The current subscription sets."""
        ...

    async def sync_now(self) -> SubscriptionsInfo:
        """Read positions and resubscribe now; the sets after the sync. Raises
        :class:`PositionSourceError` when positions cannot be read, or :class:`Unavailable`
        when this instance cannot sync (e.g. standby)."""
        ...


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """Access rules and live-stream bounds of the API (from MDS_HTTP_*, MDS_CORS_ORIGINS and
    MDS_SSE_* settings)."""

    token: str | None = None  # bearer token; None: no endpoint needs one
    protect: Literal["mutating", "all"] = "mutating"
    cors_origins: tuple[str, ...] = ()
    sse_heartbeat_s: float = 15.0
    sse_send_timeout_s: float = 10.0
    sse_min_interval_s: float = 0.1  # at most 10 writes a second per stream client
    sse_writes_per_s: float = 200.0  # and at most this many writes a second for all of them
    stale_after_s: float = 300.0  # the page greys a price older than this (MDS_PRICE_TTL)


class Unavailable(Exception):
    """The view cannot serve this request now; the API answers 503 with the message."""


def _json(body: object, status_code: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status_code=status_code,
        media_type="application/json",
        headers=_NO_STORE,
    )


def _shown(text: str) -> str:
    """User input as it may appear in an error: printable and short."""
    cut = text[:_SHOWN_INPUT]
    safe = "".join(ch if ch.isprintable() else "\ufffd" for ch in cut)
    return safe + ("…" if len(text) > _SHOWN_INPUT else "")


class _BadSymbol(Exception):
    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"invalid symbol {_shown(text)!r}: {why}")
        self.text = text


def parse_symbol(text: str) -> str:
    """Normalise then validate one symbol from a request (see the module docstring)."""
    if not text.isascii():
        raise _BadSymbol(text, "only ASCII letters, digits, '.', '/' and '-' are allowed")
    if len(text) > 4 * _SHOWN_INPUT:
        raise _BadSymbol(text, "too long")
    try:
        return normalize_symbol(text)
    except InvalidSymbol as e:
        raise _BadSymbol(text, e.why) from None


def _price_body(aged: AgedPrice) -> dict[str, object]:
    p = aged.price
    return {
        "symbol": p.symbol,
        "bid": p.bid,
        "ask": p.ask,
        "mid": p.mid,
        "timestamp": p.timestamp,
        "exchange": p.exchange,
        "bid_exchange": p.bid_exchange,
        "ask_exchange": p.ask_exchange,
        "age_s": round(aged.age_s, 6),
        "stale": aged.stale,
    }


def _subscriptions_body(info: SubscriptionsInfo) -> dict[str, object]:
    return {
        "desired": list(info.desired),
        "confirmed": list(info.confirmed),
        "left_out": list(info.left_out),
        "rejected": list(info.rejected),
        "unconfirmed": list(info.unconfirmed),
        "last_sync_error": info.last_sync_error,
        "unrouted": list(info.unrouted),
        "streams": {name: dict(body) for name, body in info.streams.items()},
    }


def _error(status_code: int, detail: str, **extra: object) -> Response:
    return _json({"detail": detail, **extra}, status_code)


def _page(stale_after_s: float) -> bytes:
    """The live page, with the service's own stale age (the page has no other way to learn it)."""
    page = (importlib.resources.files("entrypoints") / "static" / "index.html").read_bytes()
    return page.replace(b"const STALE_AFTER_S = 300;", b"const STALE_AFTER_S = %g;" % stale_after_s)


class BearerToken:
    """Pure ASGI middleware (streams pass through untouched): requests that need the token and
    lack it get 401. CORS preflights (``OPTIONS``) never need it."""

    def __init__(self, app: Any, *, token: str, protect: Literal["mutating", "all"]) -> None:
        self._app = app
        self._token = token.encode()
        self._protect = protect

    def _needs_token(self, method: str) -> bool:
        if method == "OPTIONS":
            return False
        return self._protect == "all" or method not in ("GET", "HEAD")

    def _authorised(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token):
                    return True
        return False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and self._needs_token(scope["method"])
            and not self._authorised(scope["headers"])
        ):
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"cache-control", b"no-store"),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": b'{"detail":"missing or wrong bearer token (MDS_HTTP_TOKEN)"}',
                }
            )
            return
        await self._app(scope, receive, send)


def create_app(
    view: ServiceView,
    registry: CollectorRegistry | None = None,
    *,
    fanout: PriceFanOut | None = None,
    options: HttpOptions | None = None,
) -> FastAPI:
    """The API over ``view``; ``/metrics`` exposes ``registry`` (absent: 404);
    ``/prices/stream`` serves ``fanout`` (absent: 404)."""
    opts = options or HttpOptions()
    app = FastAPI(
        title="market-data-service",
        summary="Live mid prices from Alpaca quotes, cached in Redis.",
        version="0.1.0",
        # No Swagger UI or ReDoc: both load their scripts from a CDN, which an offline or
        # locked-down network cannot reach. The schema itself is served at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )

    if opts.token is not None:
        app.add_middleware(BearerToken, token=opts.token, protect=opts.protect)

    if opts.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(opts.cors_origins),
            allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Cache-Control"],
            max_age=600,
        )

    @app.get("/", summary="The live page (HTML)", include_in_schema=False)
    async def page() -> Response:
        return Response(
            _page(opts.stale_after_s), media_type="text/html; charset=utf-8", headers=_NO_STORE
        )

    @app.exception_handler(StarletteHTTPException)
    async def not_routed(request: Request, exc: StarletteHTTPException) -> Response:
        # The router cannot match a path holding a line break; under /prices/ that is a
        # malformed symbol like any other, so answer it the same way.
        path: str = request.scope.get("path", "")
        if exc.status_code == 404 and path.startswith("/prices/"):
            try:
                parse_symbol(path.removeprefix("/prices/"))
            except _BadSymbol as e:
                return _error(422, str(e))
        return await http_exception_handler(request, exc)

    @app.head("/health", include_in_schema=False)  # probes that only look at the status
    @app.get("/health", summary="Service state (always 200)")
    async def health() -> Response:
        return _json(asdict(view.health()))

    @app.head("/ready", include_in_schema=False)
    @app.get("/ready", summary="200 when ready, 503 when not")
    async def ready() -> Response:
        info = view.health()
        body = {"ready": info.ready, "status": info.status, "detail": info.detail}
        return _json(body, 200 if info.ready else 503)

    @app.get("/prices", summary="Prices of several symbols")
    async def prices(request: Request) -> Response:
        raw = [
            item
            for value in request.query_params.getlist("symbols")
            for item in value.split(",")
            if item.strip()
        ]
        if not raw:
            return _error(422, "give symbols, e.g. /prices?symbols=AAPL,MSFT")
        if len(raw) > MAX_SYMBOLS_PER_REQUEST:
            return _error(
                422,
                f"too many symbols: {len(raw)} (at most {MAX_SYMBOLS_PER_REQUEST} per request)",
            )
        symbols: list[str] = []
        invalid: list[str] = []
        for item in raw:
            try:
                symbols.append(parse_symbol(item))
            except _BadSymbol as e:
                invalid.append(str(e))
        if invalid:
            return _error(422, invalid[0], invalid=invalid)
        wanted = list(dict.fromkeys(symbols))
        try:
            found = await view.get_prices(wanted)
        except ConnectionError as e:
            log.warning("price store unavailable for /prices: %s", e)
            return _error(503, "price store unavailable")
        return _json(
            {
                "prices": {s: _price_body(found[s]) for s in wanted if s in found},
                "missing": [s for s in wanted if s not in found],
            }
        )

    if fanout is not None:
        live = fanout

        @app.get("/prices/stream", summary="Live prices (Server-Sent Events)")
        async def price_stream(request: Request) -> Any:
            raw = [
                item
                for value in request.query_params.getlist("symbols")
                for item in value.split(",")
                if item.strip()
            ]
            symbols: list[str] | None = None
            if raw:
                try:
                    symbols = list(dict.fromkeys(parse_symbol(item) for item in raw))
                except _BadSymbol as e:
                    return _error(422, str(e))
            from entrypoints.http_sse import EventStreamResponse

            return EventStreamResponse(
                live,
                symbols,
                heartbeat_s=opts.sse_heartbeat_s,
                send_timeout_s=opts.sse_send_timeout_s,
                min_interval_s=opts.sse_min_interval_s,
                writes_per_s=opts.sse_writes_per_s,
            )

    @app.get("/prices/{symbol:path}", summary="Price of one symbol")
    async def price(symbol: str) -> Response:
        try:
            wanted = parse_symbol(symbol)
        except _BadSymbol as e:
            return _error(422, str(e))
        try:
            found = await view.get_prices([wanted])
        except ConnectionError as e:
            log.warning("price store unavailable for /prices/%s: %s", wanted, e)
            return _error(503, "price store unavailable", symbol=wanted)
        aged = found.get(wanted)
        if aged is None:
            return _error(404, f"no price cached for {wanted}", symbol=wanted)
        return _json(_price_body(aged))

    @app.get("/subscriptions", summary="Desired, confirmed and left-out symbols")
    async def subscriptions() -> Response:
        return _json(_subscriptions_body(view.subscriptions()))

    @app.post("/subscriptions/sync", summary="Read positions and resubscribe now")
    async def sync() -> Response:
        try:
            info = await view.sync_now()
        except PositionSourceError as e:
            return _error(503, f"positions unavailable: {e}")
        except Unavailable as e:
            return _error(503, str(e))
        return _json(_subscriptions_body(info))

    if registry is not None:
        metrics_registry = registry

        @app.get("/metrics", summary="Prometheus metrics (text format)")
        async def metrics() -> Response:
            return Response(
                generate_latest(metrics_registry),
                media_type=CONTENT_TYPE_LATEST,
                headers=_NO_STORE,
            )

    return app


# --- serving --------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hypercorn_config(host: str, port: int, *, graceful_timeout_s: float = 1.0) -> HypercornConfig:
    """Hypercorn's config for the API: one bind, no access log, errors to our logging."""
    config = HypercornConfig()
    config.bind = [_bind(host, port)]
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


async def serve_http(
    app: Any,
    host: str,
    port: int,
    *,
    graceful_timeout_s: float = 1.0,
    stuck_peer_timeout_s: float | None = 10.0,
    task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` with hypercorn's trio worker until cancelled.

    A peer that stops reading (its receive window stays closed) is disconnected by the kernel
    after ``stuck_peer_timeout_s`` (``TCP_USER_TIMEOUT`` on every accepted socket): hypercorn
    writes under a shielded cancel scope, so no deadline of ours could end such a write, and
    without this a stalled ``/prices/stream`` client would hold its connection for ever.

    ``task_status.started`` receives the bound addresses (``["http://127.0.0.1:8000"]``; with
    port 0 the real port) once the socket listens. When the caller's scope is cancelled the
    server stops accepting, lets requests in flight finish for at most ``graceful_timeout_s``
    (hard stop half a second later) and the cancellation propagates. A bind failure
    (``OSError``) is raised before ``started``; errors arrive as one exception, never a group.
    Trio only (hypercorn.trio).
    """
    config = hypercorn_config(host, port, graceful_timeout_s=graceful_timeout_s)
    stop = anyio.Event()
    # Once serving, the server runs shielded so that the caller's cancellation turns into a
    # graceful shutdown (``stop``) instead of killing requests in flight; the deadline bounds the
    # drain. Not while starting: a cancellation then (the feed failed fatally at the same moment)
    # must end the start, or nothing would ever set ``stop`` and the process would hang.
    server_scope = anyio.CancelScope()

    # anyio's task groups run on trio here, so ``tg.start`` hands over trio's own TaskStatus.
    sockets = config.create_sockets()  # binds now: OSError here when the port is taken
    for sock in sockets.insecure_sockets:
        if stuck_peer_timeout_s is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            # inherited by each accepted connection
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(stuck_peer_timeout_s * 1000)
            )
        sock.listen(config.backlog)

    async def run_server(*, task_status: trio.TaskStatus[list[str]]) -> None:
        with server_scope:
            await worker_serve(
                wrap_app(app, config.wsgi_max_body_size, None),
                config,
                sockets=sockets,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )

    try:
        async with anyio.create_task_group() as tg:
            binds: list[str] = await tg.start(run_server)
            server_scope.shield = True
            log.info("HTTP API listening on %s", ", ".join(binds))
            task_status.started(binds)
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()
                server_scope.deadline = anyio.current_time() + graceful_timeout_s + 0.5
    except BaseExceptionGroup as group:
        raise _single(group) from None


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one meaningful exception of a task-group failure (cancellations aside)."""
    cancelled = anyio.get_cancelled_exc_class()
    _, rest = group.split(cancelled)
    if rest is None:
        return group  # only cancellation: let the scope machinery handle it as it came
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(rest)
    return leaves[0] if len(leaves) == 1 else rest
