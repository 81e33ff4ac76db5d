"""The feed's name every price carries as ``exchange`` (one meaning: the source feed)."""

from __future__ import annotations

import pytest

from entrypoints.container import feed_source
from entrypoints.settings import load_settings

KEYS = {"ALPACA_API_KEY": "PKTEST", "ALPACA_SECRET_KEY": "secret", "MDS_FEED": "alpaca"}


@pytest.mark.parametrize(
    ("url", "source"),
    [
        ("wss://stream.data.alpaca.markets/v2/iex", "IEX"),
        ("wss://stream.data.alpaca.markets/v2/sip", "SIP"),
        ("wss://stream.data.alpaca.markets/v2/delayed_sip", "DELAYED_SIP"),
        ("ws://127.0.0.1:8765/v2/test", "TEST"),
        ("wss://stream.data.alpaca.markets/v1beta3/crypto/us", "CRYPTO_US"),
    ],
)
def test_alpaca_feeds_are_named_after_the_stream_path(url: str, source: str) -> None:
    assert feed_source(load_settings({**KEYS, "ALPACA_STREAM_URL": url})) == source


def test_the_simulator_is_sim() -> None:
    assert feed_source(load_settings({})) == "SIM"
