"""Settings: every variable's parsing, aliases, defaults, one clear error per bad variable, and
secrets that never show."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from domain.assets import AssetClass
from entrypoints.settings import (
    DEFAULT_STREAM_URL,
    DEFAULT_TRADING_URL,
    HostPort,
    Settings,
    SettingsError,
    bundled_replay_file,
    env_name,
    load_settings,
    redact_url,
    settings_markdown,
)

KEY = "PKAAAAAAAAAAAAAAAAAA"
SECRET = "zzSECRETzzSECRETzzSECRETzzSECRETzz1234"
KEYS = {"ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET}


def error_of(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    return str(info.value)


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_without_keys_run_the_simulator() -> None:
    s = load_settings({})
    assert s.alpaca_api_key is None and s.alpaca_secret_key is None
    assert s.feed == "sim"
    assert s.symbols == {"AAPL", "MSFT", "SPY"}
    assert s.stream_url == DEFAULT_STREAM_URL == "wss://stream.data.alpaca.markets/v2/iex"
    assert s.stream_format == "msgpack"
    assert s.trading_url == DEFAULT_TRADING_URL
    assert s.redis_url is None and s.redis_mode == "memory"
    assert s.redis_sentinels == () and s.redis_master == "mymaster" and s.redis_cluster is False
    assert s.replay_file == bundled_replay_file()
    assert s.replay_file.parts[-4:] == ("adapters", "replay", "data", "sample.jsonl.gz")
    assert s.replay_speed == 1.0
    assert s.symbol_limit == 30
    assert s.position_source == "none" and s.positions_url is None
    assert s.position_sync_interval_s == 300.0
    assert s.price_ttl_s == 300.0
    assert (s.reconnect_base_delay_s, s.reconnect_max_delay_s) == (5.0, 300.0)
    assert s.reconnect_max_attempts is None and s.reconnect_jitter is True
    assert s.data_timeout_s == 0.0
    assert s.allow_insecure_ws is False
    assert s.record_file is None
    assert s.sim_rate == 10.0
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8000)
    assert s.log_level == "INFO"
    assert s.ha is False and s.ha_lease_ttl_s == 10.0


def test_defaults_with_keys_stream_from_alpaca_and_only_positions() -> None:
    s = load_settings(KEYS)
    assert s.feed == "alpaca"
    assert s.symbols == frozenset()
    assert s.has_alpaca_keys
    assert s.alpaca_api_key is not None and s.alpaca_api_key.get_secret_value() == KEY
    assert s.alpaca_secret_key is not None and s.alpaca_secret_key.get_secret_value() == SECRET


def test_replay_defaults_to_the_sim_symbols(tmp_path: Path) -> None:
    recording = tmp_path / "r.jsonl.gz"
    recording.write_bytes(b"")
    s = load_settings({"MDS_FEED": "replay", "MDS_REPLAY_FILE": str(recording)})
    assert s.feed == "replay" and s.symbols == {"AAPL", "MSFT", "SPY"}


@pytest.mark.parametrize(("tty", "expected"), [(True, "console"), (False, "json")])
def test_log_format_default_follows_stderr(
    monkeypatch: pytest.MonkeyPatch, tty: bool, expected: str
) -> None:
    class FakeStderr(io.StringIO):
        def isatty(self) -> bool:
            return tty

    monkeypatch.setattr("sys.stderr", FakeStderr())
    assert load_settings({}).log_format == expected


# --- aliases -------------------------------------------------------------------------------------


def test_apca_aliases_are_accepted() -> None:
    s = load_settings({"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET})
    assert s.alpaca_api_key is not None and s.alpaca_api_key.get_secret_value() == KEY
    assert s.alpaca_secret_key is not None and s.alpaca_secret_key.get_secret_value() == SECRET
    assert s.feed == "alpaca"


def test_primary_name_wins_over_the_alias() -> None:
    s = load_settings({**KEYS, "APCA_API_KEY_ID": "OTHER", "APCA_API_SECRET_KEY": "OTHER2"})
    assert s.alpaca_api_key is not None and s.alpaca_api_key.get_secret_value() == KEY


def test_names_are_case_sensitive() -> None:
    assert load_settings({"mds_price_ttl": "-1", "price_ttl_s": "-1"}).price_ttl_s == 300.0


# --- parsing of every variable -------------------------------------------------------------------

TOKEN = {"MDS_HTTP_TOKEN": "a-token-of-24-characters"}  # a non-loopback API needs one

PARSED: list[tuple[dict[str, str], str, Any]] = [
    (
        {"ALPACA_STREAM_URL": "wss://stream.data.alpaca.markets/v2/sip"},
        "stream_url",
        "wss://stream.data.alpaca.markets/v2/sip",
    ),
    (
        {"ALPACA_STREAM_URL": "ws://127.0.0.1:8765/v2/test"},
        "stream_url",
        "ws://127.0.0.1:8765/v2/test",
    ),
    (
        {"ALPACA_STREAM_URL": "ws://localhost:8765/v2/iex"},
        "stream_url",
        "ws://localhost:8765/v2/iex",
    ),
    ({"ALPACA_STREAM_URL": "ws://[::1]:8765/v2/iex"}, "stream_url", "ws://[::1]:8765/v2/iex"),
    (
        {"ALPACA_STREAM_URL": "ws://feed.lan/v2/iex", "MDS_ALLOW_INSECURE_WS": "yes"},
        "stream_url",
        "ws://feed.lan/v2/iex",
    ),
    ({"ALPACA_STREAM_FORMAT": "json"}, "stream_format", "json"),
    (
        {"ALPACA_CRYPTO_STREAM_URL": "ws://127.0.0.1:8765/v1beta3/crypto/us"},
        "crypto_stream_url",
        "ws://127.0.0.1:8765/v1beta3/crypto/us",
    ),
    (
        {"ALPACA_OPTIONS_STREAM_URL": "wss://stream.data.alpaca.markets/v1beta1/opra"},
        "options_stream_url",
        "wss://stream.data.alpaca.markets/v1beta1/opra",
    ),
    ({}, "asset_classes", frozenset(AssetClass)),
    (
        {"MDS_ASSET_CLASSES": " us_equity, CRYPTO"},
        "asset_classes",
        frozenset({AssetClass.US_EQUITY, AssetClass.CRYPTO}),
    ),
    ({}, "data_url", "https://data.alpaca.markets"),
    ({"ALPACA_DATA_URL": "http://127.0.0.1:8765/"}, "data_url", "http://127.0.0.1:8765"),
    ({}, "initial_image", False),
    (KEYS, "initial_image", True),
    ({**KEYS, "MDS_INITIAL_IMAGE": "false"}, "initial_image", False),
    ({**KEYS, "MDS_FEED": "sim", "MDS_INITIAL_IMAGE": "on"}, "initial_image", True),
    ({"ALPACA_STREAM_FORMAT": " MsgPack "}, "stream_format", "msgpack"),
    ({}, "stream_auth", "header"),
    ({"ALPACA_AUTH": " Message "}, "stream_auth", "message"),
    (
        {"ALPACA_TRADING_URL": "https://api.alpaca.markets/"},
        "trading_url",
        "https://api.alpaca.markets",
    ),
    ({"ALPACA_TRADING_URL": "http://127.0.0.1:9000"}, "trading_url", "http://127.0.0.1:9000"),
    ({"REDIS_URL": "redis://localhost:6390/1"}, "redis_url", "redis://localhost:6390/1"),
    (
        {"REDIS_URL": "rediss://:pw@cache.internal:6380"},
        "redis_url",
        "rediss://:pw@cache.internal:6380",
    ),
    ({"REDIS_URL": "unix:///run/redis.sock"}, "redis_url", "unix:///run/redis.sock"),
    ({"REDIS_URL": ""}, "redis_url", None),
    (
        {"MDS_REDIS_SENTINELS": "s1:26379, s2:26380,[::1]:26381,"},
        "redis_sentinels",
        (HostPort("s1", 26379), HostPort("s2", 26380), HostPort("::1", 26381)),
    ),
    ({"MDS_REDIS_MASTER": "prices"}, "redis_master", "prices"),
    ({"MDS_REDIS_CLUSTER": "true", "REDIS_URL": "redis://c1:7000"}, "redis_cluster", True),
    ({"MDS_FEED": "SIM"}, "feed", "sim"),
    ({**KEYS, "MDS_FEED": "sim"}, "feed", "sim"),
    ({"MDS_REPLAY_SPEED": "0"}, "replay_speed", 0.0),
    ({"MDS_REPLAY_SPEED": "12.5"}, "replay_speed", 12.5),
    ({"MDS_REPLAY_KEEP_TIMES": "true"}, "replay_keep_times", True),
    (
        {"MDS_SYMBOLS": "aapl, msft,,BRK.B ,BTC/USD"},
        "symbols",
        frozenset({"AAPL", "MSFT", "BRK.B", "BTC/USD"}),
    ),
    ({"MDS_SYMBOLS": ""}, "symbols", frozenset()),
    ({"MDS_SYMBOL_LIMIT": "100"}, "symbol_limit", 100),
    ({"MDS_SYMBOL_LIMIT": "0"}, "symbol_limit", None),
    ({"MDS_SYMBOL_LIMIT": "none"}, "symbol_limit", None),
    ({"MDS_SYMBOL_LIMIT": "Unlimited"}, "symbol_limit", None),
    ({"MDS_POSITION_SOURCE": "alpaca", **KEYS}, "position_source", "alpaca"),
    (
        {"MDS_POSITION_SOURCE": "gateway", "MDS_POSITIONS_URL": "http://gw:8080/positions"},
        "positions_url",
        "http://gw:8080/positions",
    ),
    ({"MDS_POSITION_SYNC_INTERVAL": "15"}, "position_sync_interval_s", 15.0),
    ({"MDS_POSITION_CALLS_PER_MINUTE": "60"}, "position_calls_per_minute", 60.0),
    ({"MDS_HTTP_MAX_CONCURRENCY": "16"}, "http_max_concurrency", 16),
    ({"MDS_PRICE_TTL": "60.5"}, "price_ttl_s", 60.5),
    ({"MDS_MAX_FUTURE_SKEW": "0.5"}, "max_future_skew_s", 0.5),
    ({"MDS_RECONNECT_BASE_DELAY": "0.5"}, "reconnect_base_delay_s", 0.5),
    ({"MDS_RECONNECT_MAX_DELAY": "30"}, "reconnect_max_delay_s", 30.0),
    ({"MDS_RECONNECT_MAX_ATTEMPTS": "7"}, "reconnect_max_attempts", 7),
    ({"MDS_RECONNECT_MAX_ATTEMPTS": ""}, "reconnect_max_attempts", None),
    ({"MDS_RECONNECT_MAX_ATTEMPTS": "none"}, "reconnect_max_attempts", None),
    ({"MDS_RECONNECT_JITTER": "false"}, "reconnect_jitter", False),
    ({"MDS_RECONNECT_JITTER": "0"}, "reconnect_jitter", False),
    ({"MDS_DATA_TIMEOUT": "60"}, "data_timeout_s", 60.0),
    ({"MDS_ALLOW_INSECURE_WS": "on"}, "allow_insecure_ws", True),
    ({"MDS_SIM_RATE": "2500"}, "sim_rate", 2500.0),
    ({"MDS_HTTP_HOST": "0.0.0.0", **TOKEN}, "http_host", "0.0.0.0"),
    ({"MDS_HTTP_HOST": "::", **TOKEN}, "http_host", "::"),
    ({"MDS_HTTP_HOST": "[::1]"}, "http_host", "::1"),
    ({"MDS_HTTP_HOST": "mds-api.internal", **TOKEN}, "http_host", "mds-api.internal"),
    ({"MDS_HTTP_PORT": "0"}, "http_port", 0),
    ({"MDS_HTTP_PORT": "9100"}, "http_port", 9100),
    ({"MDS_LOG_FORMAT": "JSON"}, "log_format", "json"),
    ({"MDS_LOG_FORMAT": "console"}, "log_format", "console"),
    ({"MDS_LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
    ({"MDS_LOG_LEVEL": "warn"}, "log_level", "WARNING"),
    ({"MDS_HA": "true", "REDIS_URL": "redis://r:6379"}, "ha", True),
    ({"MDS_HA_LEASE_TTL": "3.5"}, "ha_lease_ttl_s", 3.5),
    ({"MDS_HTTP_PROTECT": "all", "MDS_HTTP_TOKEN": "0123456789abcdef"}, "http_protect", "all"),
    (
        {"MDS_CORS_ORIGINS": "https://desk.example, http://localhost:3000/,https://desk.example"},
        "cors_origins",
        ("https://desk.example", "http://localhost:3000"),
    ),
    ({"MDS_CORS_ORIGINS": "*"}, "cors_origins", ("*",)),
    ({"MDS_SSE_MAX_CLIENTS": "7"}, "sse_max_clients", 7),
    ({"MDS_SSE_SEND_TIMEOUT": "2.5"}, "sse_send_timeout_s", 2.5),
]


@pytest.mark.parametrize(("env", "field", "expected"), PARSED)
def test_each_variable_parses(env: dict[str, str], field: str, expected: Any) -> None:
    assert getattr(load_settings(env), field) == expected


def test_every_variable_has_a_parsing_case() -> None:
    covered = {env_name(field) for _, field, _ in PARSED}
    covered |= {"ALPACA_API_KEY", "ALPACA_SECRET_KEY", "MDS_REPLAY_FILE", "MDS_RECORD_FILE"}
    covered |= {"MDS_HTTP_TOKEN"}  # a secret: test_http_token_is_a_secret
    assert covered == {env_name(field) for field in Settings.model_fields}


def test_file_variables(tmp_path: Path) -> None:
    recording = tmp_path / "in.jsonl"
    recording.write_text("")
    s = load_settings(
        {
            "MDS_FEED": "replay",
            "MDS_REPLAY_FILE": str(recording),
            "MDS_RECORD_FILE": str(tmp_path / "out.jsonl"),
        }
    )
    assert s.replay_file == recording
    assert s.record_file == tmp_path / "out.jsonl"


def test_redis_modes() -> None:
    assert load_settings({"REDIS_URL": "redis://r:1"}).redis_mode == "single"
    assert load_settings({"MDS_REDIS_SENTINELS": "s:26379"}).redis_mode == "sentinel"
    cluster = {"REDIS_URL": "redis://r:1", "MDS_REDIS_CLUSTER": "1"}
    assert load_settings(cluster).redis_mode == "cluster"


# --- invalid values name their variable ----------------------------------------------------------

INVALID: list[tuple[str, str]] = [
    ("ALPACA_CRYPTO_STREAM_URL", "https://stream.data.alpaca.markets/v1beta3/crypto/us"),
    ("ALPACA_OPTIONS_STREAM_URL", "wss://"),
    ("MDS_ASSET_CLASSES", "us_equity,bonds"),
    ("MDS_ASSET_CLASSES", ","),
    ("ALPACA_DATA_URL", "http://data.alpaca.markets"),
    ("MDS_INITIAL_IMAGE", "maybe"),
    ("ALPACA_STREAM_URL", "https://stream.data.alpaca.markets/v2/iex"),
    ("ALPACA_STREAM_URL", "wss://"),
    ("ALPACA_STREAM_URL", "wss://host:notaport/v2"),
    ("ALPACA_STREAM_FORMAT", "xml"),
    ("ALPACA_AUTH", "basic"),
    ("ALPACA_TRADING_URL", "http://api.alpaca.markets"),
    ("ALPACA_TRADING_URL", "paper-api.alpaca.markets"),
    ("REDIS_URL", "http://localhost:6379"),
    ("REDIS_URL", "redis:// spaces"),
    ("MDS_REDIS_SENTINELS", "s1"),
    ("MDS_REDIS_SENTINELS", "s1:0"),
    ("MDS_REDIS_SENTINELS", "bad host!:26379"),
    ("MDS_REDIS_MASTER", "my master"),
    ("MDS_REDIS_CLUSTER", "sometimes"),
    ("MDS_FEED", "polygon"),
    ("MDS_REPLAY_SPEED", "-1"),
    ("MDS_REPLAY_SPEED", "fast"),
    ("MDS_REPLAY_SPEED", "inf"),
    ("MDS_SYMBOLS", "AAPL,$$$"),
    ("MDS_SYMBOLS", "WAYTOOLONGSYMBOLNAMEXXXXXX"),
    ("MDS_SYMBOL_LIMIT", "-5"),
    ("MDS_SYMBOL_LIMIT", "1.5"),
    ("MDS_POSITION_SOURCE", "ibkr"),
    ("MDS_POSITIONS_URL", "ftp://gw/positions"),
    ("MDS_POSITION_SYNC_INTERVAL", "0"),
    ("MDS_POSITION_SYNC_INTERVAL", "nan"),
    ("MDS_POSITION_CALLS_PER_MINUTE", "0"),
    ("MDS_HTTP_MAX_CONCURRENCY", "0"),
    ("MDS_PRICE_TTL", "-1"),
    ("MDS_PRICE_TTL", "0"),
    ("MDS_MAX_FUTURE_SKEW", "0"),
    ("MDS_MAX_FUTURE_SKEW", "inf"),
    ("MDS_RECONNECT_BASE_DELAY", "0"),
    ("MDS_RECONNECT_MAX_DELAY", "-3"),
    ("MDS_RECONNECT_MAX_ATTEMPTS", "0"),
    ("MDS_RECONNECT_MAX_ATTEMPTS", "many"),
    ("MDS_RECONNECT_JITTER", "2"),
    ("MDS_DATA_TIMEOUT", "-1"),
    ("MDS_ALLOW_INSECURE_WS", "perhaps"),
    ("MDS_RECORD_FILE", "/no/such/directory/rec.jsonl"),
    ("MDS_SIM_RATE", "0"),
    ("MDS_HTTP_HOST", "not a host"),
    ("MDS_HTTP_HOST", "bücher.example"),
    ("MDS_HTTP_PORT", "65536"),
    ("MDS_HTTP_PORT", "-1"),
    ("MDS_HTTP_PORT", "http"),
    ("MDS_LOG_FORMAT", "xml"),
    ("MDS_LOG_LEVEL", "LOUD"),
    ("MDS_HA", "maybe"),
    ("MDS_HA_LEASE_TTL", "0"),
    ("MDS_HTTP_PROTECT", "some"),
    ("MDS_CORS_ORIGINS", "desk.example"),
    ("MDS_CORS_ORIGINS", "https://desk.example/path"),
    ("MDS_SSE_MAX_CLIENTS", "0"),
    ("MDS_SSE_SEND_TIMEOUT", "0"),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_each_invalid_value_names_its_variable_and_value(name: str, value: str) -> None:
    message = error_of({name: value})
    lines = message.splitlines()
    assert lines[0] == "invalid configuration:"
    problems = [line.strip() for line in lines[1:]]
    assert len(problems) == 1, message
    assert problems[0].startswith(f"{name}: "), message
    shown = value if len(value) < 50 else value[:50]
    assert repr(shown)[:-1] in problems[0] or shown in problems[0], message


def test_message_reads_like_the_contract_example() -> None:
    assert error_of({"MDS_PRICE_TTL": "-1"}) == (
        "invalid configuration:\n  MDS_PRICE_TTL: must be > 0 (got '-1')"
    )


def test_every_bad_variable_is_reported_at_once() -> None:
    message = error_of({"MDS_PRICE_TTL": "x", "MDS_HTTP_PORT": "99999", "MDS_FEED": "nope"})
    names = re.findall(r"^  ([A-Z_]+):", message, flags=re.M)
    assert sorted(names) == ["MDS_FEED", "MDS_HTTP_PORT", "MDS_PRICE_TTL"]
    assert "default factory" not in message  # consequences of MDS_FEED are not reported


# --- cross-field checks ---------------------------------------------------------------------------


def test_alpaca_feed_without_keys_names_the_key() -> None:
    message = error_of({"MDS_FEED": "alpaca"})
    assert "ALPACA_API_KEY: required for MDS_FEED=alpaca" in message


def test_one_key_without_the_other() -> None:
    assert "ALPACA_SECRET_KEY: required when ALPACA_API_KEY is set" in error_of(
        {"ALPACA_API_KEY": KEY}
    )
    assert "ALPACA_API_KEY: required when ALPACA_SECRET_KEY is set" in error_of(
        {"APCA_API_SECRET_KEY": SECRET}
    )


def test_alpaca_position_source_needs_keys() -> None:
    assert "ALPACA_API_KEY: required for MDS_POSITION_SOURCE=alpaca" in error_of(
        {"MDS_POSITION_SOURCE": "alpaca"}
    )


def test_gateway_needs_its_url() -> None:
    message = error_of({"MDS_POSITION_SOURCE": "gateway"})
    assert "MDS_POSITIONS_URL: required when MDS_POSITION_SOURCE=gateway" in message
    assert "MDS_POSITIONS_URL" in error_of(
        {"MDS_POSITION_SOURCE": "gateway", "MDS_POSITIONS_URL": "  "}
    )


def test_base_delay_above_max_delay() -> None:
    message = error_of({"MDS_RECONNECT_BASE_DELAY": "60", "MDS_RECONNECT_MAX_DELAY": "30"})
    assert "MDS_RECONNECT_BASE_DELAY: must be <= MDS_RECONNECT_MAX_DELAY (got 60 > 30)" in message


def test_insecure_websocket_to_a_remote_host_is_refused() -> None:
    message = error_of({"ALPACA_STREAM_URL": "ws://stream.data.alpaca.markets/v2/iex"})
    assert message.splitlines()[1].strip().startswith("ALPACA_STREAM_URL: ws:// to a non-loopback")
    assert "MDS_ALLOW_INSECURE_WS" in message


def test_redis_combinations() -> None:
    assert "MDS_REDIS_CLUSTER: cannot be combined" in error_of(
        {"MDS_REDIS_CLUSTER": "1", "REDIS_URL": "redis://r:1", "MDS_REDIS_SENTINELS": "s:1"}
    )
    assert "REDIS_URL: required when MDS_REDIS_CLUSTER=true" in error_of(
        {"MDS_REDIS_CLUSTER": "true"}
    )
    assert "MDS_HA: needs Redis" in error_of({"MDS_HA": "true"})


def test_replay_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl.gz"
    message = error_of({"MDS_FEED": "replay", "MDS_REPLAY_FILE": str(missing)})
    assert f"MDS_REPLAY_FILE: file not found: '{missing}'" in message


def test_several_cross_field_problems_are_reported_together() -> None:
    message = error_of(
        {
            "MDS_FEED": "alpaca",
            "MDS_POSITION_SOURCE": "gateway",
            "MDS_RECONNECT_BASE_DELAY": "500",
        }
    )
    names = re.findall(r"^  ([A-Z_]+):", message, flags=re.M)
    assert names == ["ALPACA_API_KEY", "MDS_POSITIONS_URL", "MDS_RECONNECT_BASE_DELAY"]


# --- secrets -------------------------------------------------------------------------------------


def test_secrets_never_in_str_repr_or_redacted() -> None:
    s = load_settings({**KEYS, "REDIS_URL": "redis://user:redispw123@r:6379/0"})
    for text in (str(s), repr(s), repr(s.alpaca_api_key), str(s.redacted())):
        assert KEY not in text and SECRET not in text and "redispw123" not in text
    assert s.redacted()["ALPACA_API_KEY"] == "***"
    assert s.redacted()["REDIS_URL"] == "redis://user:***@r:6379/0"
    assert set(s.secret_values()) == {KEY, SECRET, "redispw123"}


@pytest.mark.parametrize(
    "env",
    [
        {**KEYS, "MDS_PRICE_TTL": "-1"},
        {"ALPACA_API_KEY": KEY},
        {"ALPACA_API_KEY": f" {KEY}\x00", "ALPACA_SECRET_KEY": SECRET},
        {"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": f"{SECRET} x"},
        {**KEYS, "MDS_FEED": "bogus", "MDS_POSITION_SOURCE": "gateway"},
        {**KEYS, "ALPACA_STREAM_URL": "ws://remote/v2/iex"},
        {"REDIS_URL": "redis://:redispw123@r:99999", **KEYS},
    ],
)
def test_secrets_never_in_errors(env: dict[str, str]) -> None:
    message = error_of(env)
    for secret in (KEY, SECRET, "redispw123"):
        assert secret not in message


def test_bad_key_error_names_the_alias_that_was_set() -> None:
    message = error_of({"APCA_API_KEY_ID": "has space", "APCA_API_SECRET_KEY": SECRET})
    assert "APCA_API_KEY_ID: must not contain spaces" in message
    assert "has space" not in message


def test_direct_construction_hides_inputs_in_validation_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.delenv("ALPACA_SECRET_KEY", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert KEY not in str(info.value) and KEY not in repr(info.value)


def test_positions_url_token_is_not_shown() -> None:
    message = error_of({"MDS_POSITIONS_URL": "ftp://u:pw9876@gw/p?token=tok5555"})
    assert "pw9876" not in message and "tok5555" not in message
    assert redact_url("https://gw/p?token=abc") == "https://gw/p?***"


# --- sources -------------------------------------------------------------------------------------


def test_process_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MDS_PRICE_TTL=42\nMDS_HTTP_PORT=9001\n")
    monkeypatch.setenv("MDS_HTTP_PORT", "9002")
    s = load_settings()
    assert s.price_ttl_s == 42.0  # from .env
    assert s.http_port == 9002  # the real environment wins over .env


def test_dotenv_errors_quote_the_file_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MDS_PRICE_TTL=-9\n")
    with pytest.raises(SettingsError, match=r"MDS_PRICE_TTL: must be > 0 \(got '-9'\)"):
        load_settings()


def test_mapping_replaces_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MDS_PRICE_TTL", "-1")  # would be invalid if it were read
    env_file = tmp_path / "custom.env"
    env_file.write_text("MDS_HTTP_PORT=7000\nMDS_SIM_RATE=5\n")
    assert load_settings({}).price_ttl_s == 300.0
    s = load_settings({"MDS_SIM_RATE": "7"}, env_file=env_file)
    assert s.http_port == 7000 and s.sim_rate == 7.0


# --- documentation -------------------------------------------------------------------------------


def test_markdown_table_lists_every_variable_once() -> None:
    table = settings_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    names = [re.match(r"\| `([A-Z_]+)`", row).group(1) for row in rows]  # type: ignore[union-attr]
    assert names == [env_name(field) for field in Settings.model_fields]
    assert len(set(names)) == len(names)
    assert all(row.count(" | ") == 2 for row in rows)
    assert "| `MDS_PRICE_TTL` | `300` |" in table


def test_a_redis_url_option_redis_py_refuses_is_a_setting_error() -> None:
    """``?socket_timeout=abc``: refused by redis-py's own URL parser at load time (one line
    naming REDIS_URL and the option; the query itself stays hidden: it may hold secrets)."""
    message = error_of({"REDIS_URL": "redis://r:6379/0?socket_timeout=abc"})
    problems = [line.strip() for line in message.splitlines()[1:]]
    assert len(problems) == 1 and problems[0].startswith("REDIS_URL: "), message
    assert "socket_timeout" in problems[0] and "abc" not in problems[0], message


def test_http_token_is_a_secret() -> None:
    token = "0123456789abcdef-secret"
    s = load_settings({"MDS_HTTP_TOKEN": token})
    assert s.http_token is not None and s.http_token.get_secret_value() == token
    assert token in s.secret_values()
    assert token not in repr(s) and token not in str(s.redacted())
    assert s.redacted()["MDS_HTTP_TOKEN"] == "***"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "mds-api.internal"])
def test_a_non_loopback_api_needs_a_token(host: str) -> None:
    message = error_of({"MDS_HTTP_HOST": host})
    assert "MDS_HTTP_TOKEN: required when MDS_HTTP_HOST is not loopback" in message
    assert load_settings({"MDS_HTTP_HOST": host, "MDS_HTTP_TOKEN": "x" * 16}).http_host


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_a_loopback_api_needs_no_token(host: str) -> None:
    assert load_settings({"MDS_HTTP_HOST": host}).http_token is None


def test_protecting_everything_needs_a_token() -> None:
    assert "MDS_HTTP_TOKEN: required when MDS_HTTP_PROTECT=all" in error_of(
        {"MDS_HTTP_PROTECT": "all"}
    )


def test_a_weak_token_is_refused_without_echoing_it() -> None:
    message = error_of({"MDS_HTTP_TOKEN": "short-tok"})
    assert message.splitlines()[1].strip().startswith("MDS_HTTP_TOKEN: must be at least 16")
    assert "short-tok" not in message
