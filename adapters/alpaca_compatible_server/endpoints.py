"""The stream endpoints the server serves, by URL path, and what each one allows.

Alpaca serves one stream per path (``wss://stream.data.alpaca.markets/{version}/{feed}``); a path
that is no stream is refused at the upgrade with HTTP 404 (what alpaca-py and the Go SDK report
for a wrong URL: "server rejected WebSocket connection: HTTP 404"). The connection limit is
counted per endpoint ("the number of connections to a single endpoint from a user is limited
... in most subscriptions this limit is 1", Alpaca's WebSocket Stream page), so ``/v2/iex`` and
``/v2/sip`` each hold one session of the same key.

Extension point: an asset class other than stocks is one more :class:`Endpoint` in
``ServerConfig.endpoints`` (see :func:`stock_endpoints`) with its own channels, limits, venue
codes and ``market`` factory (a :class:`~adapters.alpaca_compatible_server.market.MarketData`
subclass generating that class's messages). Sessions read everything feed-specific from their
endpoint; nothing in the session names a feed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final

from adapters.alpaca_compatible_server.market import (
    CryptoMarketData,
    DataParams,
    MarketData,
    OptionMarketData,
)

#: Every channel name Alpaca's market-data streams know (stocks, crypto, options, news). A
#: subscribe naming one that the endpoint does not offer is answered with 410 ("invalid
#: subscribe action for this feed"); keys that are no channel at all are ignored.
KNOWN_CHANNELS: Final = frozenset(
    {
        "trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds",
        "imbalances", "orderbooks", "news",
    }
)  # fmt: skip

STOCK_CHANNELS: Final = (
    "trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds", "imbalances",
)  # fmt: skip
"""Subscribable on the stock streams, in the order the ack lists them."""

IEX_EXCHANGES: Final = ("V",)
"""The IEX feed carries IEX's own book and trades only: venue code ``V``."""
SIP_EXCHANGES: Final = ("A", "B", "C", "D", "H", "I", "J", "K", "L", "M", "N", "P", "Q", "U",
                        "V", "W", "X", "Y", "Z")  # fmt: skip
"""Alpaca's stock exchange codes on the consolidated feed (``D`` is FINRA ADF, trades only in
practice; kept: a client must accept any code)."""

MarketFactory = Callable[[DataParams, random.Random], MarketData]


class AssetClass(StrEnum):
    STOCKS = "stocks"
    CRYPTO = "crypto"
    OPTIONS = "options"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One stream: its path and what a session on it may do."""

    path: str
    """The URL path, e.g. ``/v2/iex`` (no query string)."""
    asset_class: AssetClass
    channels: tuple[str, ...]
    """Subscribable channels, in the order the ack lists them."""
    limited_channels: frozenset[str]
    """Channels whose symbols count against the symbol limit (405). Alpaca's plans limit trades
    and quotes; minute bars and the others are unlimited."""
    exchanges: tuple[str, ...]
    """Venue codes the feed's messages carry (``bx``/``ax``/``x``)."""
    follow_trades: tuple[str, ...] = ()
    """Ack keys that mirror ``trades`` (stocks: ``corrections`` and ``cancelErrors``)."""
    ack_when_non_empty: frozenset[str] = frozenset()
    """Channels the ack lists only when subscribed (``imbalances``, missing from the docs'
    examples)."""
    data_symbols: frozenset[str] | None = None
    """Symbols that get data; ``None``: every symbol. Alpaca's test stream quotes FAKEPACA
    only; other symbols are acked and stay silent."""
    msgpack_only: bool = False
    """Answer a JSON session's auth with 412 (the option streams)."""
    no_wildcard: frozenset[str] = frozenset()
    """Channels where ``"*"`` is refused with 413 (option quotes)."""
    market: MarketFactory = field(default=MarketData)
    """Builds a session's data source."""


def _stocks(path: str, exchanges: tuple[str, ...]) -> Endpoint:
    return Endpoint(
        path=path,
        asset_class=AssetClass.STOCKS,
        channels=STOCK_CHANNELS,
        limited_channels=frozenset({"trades", "quotes"}),
        exchanges=exchanges,
        follow_trades=("corrections", "cancelErrors"),
        ack_when_non_empty=frozenset({"imbalances"}),
    )


def stock_endpoints() -> tuple[Endpoint, ...]:
    """Alpaca's stock streams (``/v2/{feed}``): ``iex`` (free plan), ``sip``, ``delayed_sip``
    and the always-on test stream ``test`` (FAKEPACA only)."""
    return (
        _stocks("/v2/iex", IEX_EXCHANGES),
        _stocks("/v2/sip", SIP_EXCHANGES),
        _stocks("/v2/delayed_sip", SIP_EXCHANGES),
        replace(_stocks("/v2/test", SIP_EXCHANGES), data_symbols=frozenset({"FAKEPACA"})),
    )


CRYPTO_CHANNELS: Final = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "orderbooks")
"""Subscribable on the crypto stream (alpaca-py's CryptoDataStream, Alpaca's crypto page)."""
OPTION_CHANNELS: Final = ("trades", "quotes")
"""The option stream offers trades and quotes only; anything else is 410."""
OPRA_EXCHANGES: Final = ("A", "B", "C", "D", "E", "H", "I", "J", "M", "N", "O", "P", "Q", "S",
                         "T", "U", "W", "X", "Z")  # fmt: skip
"""OPRA participant codes as Alpaca's option quotes carry them (``bx``/``ax``)."""
CRYPTO_PATH: Final = "/v1beta3/crypto/us"
OPTION_PATHS: Final = ("/v1beta1/indicative", "/v1beta1/opra")


def crypto_endpoints() -> tuple[Endpoint, ...]:
    """Alpaca's crypto stream (``/v1beta3/crypto/us``): JSON or msgpack, pairs like
    ``BTC/USD``, around the clock. The plan limits trades and quotes like the stock streams."""
    return (
        Endpoint(
            path=CRYPTO_PATH,
            asset_class=AssetClass.CRYPTO,
            channels=CRYPTO_CHANNELS,
            limited_channels=frozenset({"trades", "quotes"}),
            exchanges=("CBSE",),
            market=CryptoMarketData,
        ),
    )


def option_endpoints() -> tuple[Endpoint, ...]:
    """Alpaca's option streams (``/v1beta1/indicative`` free, ``/v1beta1/opra`` with the
    plan): msgpack only (a JSON session's auth gets 412), OCC symbols, ``"*"`` refused for
    quotes (413)."""
    return tuple(
        Endpoint(
            path=path,
            asset_class=AssetClass.OPTIONS,
            channels=OPTION_CHANNELS,
            limited_channels=frozenset({"trades", "quotes"}),
            exchanges=OPRA_EXCHANGES,
            msgpack_only=True,
            no_wildcard=frozenset({"quotes"}),
            market=OptionMarketData,
        )
        for path in OPTION_PATHS
    )


def all_endpoints() -> tuple[Endpoint, ...]:
    """Stocks, crypto and options: every stream a paper-mode service connects to."""
    return stock_endpoints() + crypto_endpoints() + option_endpoints()


def endpoint_map(endpoints: Iterable[Endpoint]) -> Mapping[str, Endpoint]:
    """Endpoints by path; raises ``ValueError`` on a duplicate or malformed path."""
    by_path: dict[str, Endpoint] = {}
    for endpoint in endpoints:
        if not endpoint.path.startswith("/") or "?" in endpoint.path:
            raise ValueError(f"an endpoint path starts with / and has no query: {endpoint.path}")
        if endpoint.path in by_path:
            raise ValueError(f"two endpoints at {endpoint.path}")
        by_path[endpoint.path] = endpoint
    return by_path


def request_path(target: str) -> str:
    """The path of a request target (``/v2/iex?x=1`` -> ``/v2/iex``)."""
    return target.partition("?")[0]
