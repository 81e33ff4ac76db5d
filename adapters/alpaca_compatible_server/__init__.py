"""A local Alpaca-compatible market-data stream server: paper feed, test double, load generator.

Run it in-process (``port = await nursery.start(AlpacaCompatibleServer(config).run)``) or as
``python -m adapters.alpaca_compatible_server --help``. Stands alone: it imports nothing from
``adapters.alpaca``.
"""

from adapters.alpaca_compatible_server.config import Faults, ServerConfig, SlowClientPolicy
from adapters.alpaca_compatible_server.endpoints import AssetClass, Endpoint, stock_endpoints
from adapters.alpaca_compatible_server.frames import WireFormat
from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer, ServerStats
from adapters.alpaca_compatible_server.session import Session

__all__ = [
    "AlpacaCompatibleServer",
    "AssetClass",
    "Endpoint",
    "Faults",
    "ServerConfig",
    "ServerStats",
    "Session",
    "SlowClientPolicy",
    "WireFormat",
    "stock_endpoints",
]
