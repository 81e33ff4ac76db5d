"""Setting values: parsing hosts and URLs, redacting URLs, showing values without secrets."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Final, NamedTuple
from urllib.parse import SplitResult, urlsplit

NONE_WORDS: Final = frozenset({"", "none", "null", "unlimited", "off"})
LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
HOSTNAME: Final = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?)+")
URL_FIELDS: Final = frozenset(
    {
        "redis_url",
        "positions_url",
        "stream_url",
        "trading_url",
        "crypto_stream_url",
        "options_stream_url",
        "data_url",
    }
)
SECRET_FIELDS: Final = frozenset({"alpaca_api_key", "alpaca_secret_key", "http_token"})


class SettingsError(Exception):
    """The configuration is invalid; the message lists every problem, one per line, each
    starting with the environment variable's name. Never contains a secret."""


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_url(value: str, schemes: frozenset[str]) -> SplitResult:
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme.lower() not in schemes:
        allowed = " or ".join(f"{s}://" for s in sorted(schemes))
        raise ValueError(f"must be a URL starting with {allowed}")
    if parts.scheme in ("unix",):
        if not parts.path:
            raise ValueError("a unix:// URL needs a socket path")
        return parts
    if not parts.hostname:
        raise ValueError("the URL has no host")
    try:
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise ValueError("the URL's port must be a number from 0 to 65535") from None
    return parts


def redact_url(url: str) -> str:
    """``url`` with the password of its user-info and its query (tokens live there) replaced
    by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "***"
    if password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if parts.query:
        parts = parts._replace(query="***")
    return parts.geturl()


def none_word(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() in NONE_WORDS


def strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def check_host(host: str) -> None:
    if not host:
        raise ValueError("empty host")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not host.isascii() or HOSTNAME.fullmatch(host) is None:
        raise ValueError(f"not a host name or IP address: {shorten(host)}")


def shorten(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…'"


def display(name: str, value: object) -> str:
    if name in SECRET_FIELDS:
        return "***" if value is not None else "unset"
    if value is None:
        return "unset"
    if name in URL_FIELDS and isinstance(value, str):
        return redact_url(value)
    if isinstance(value, frozenset):
        return ",".join(sorted(value)) or "(none)"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return str(value)
