"""HTTP adapters (httpx): the PositionSource implementations that poll a REST endpoint."""

from adapters.http.position_source import AlpacaPositionSource, GatewayPositionSource

__all__ = ["AlpacaPositionSource", "GatewayPositionSource"]
