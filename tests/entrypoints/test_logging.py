"""Logging set-up: JSON lines that parse, console output, and secrets redacted everywhere a
record can carry them. Output is captured from the handler's stream, not with caplog."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from entrypoints.logging_setup import RedactingFilter, configure_logging

SECRET = "sk-live-0123456789abcdef"
KEY = "PKXXXXXXXXXXXXXXXXXX"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_parse_with_their_fields() -> None:
    out = io.StringIO()
    configure_logging("json", "DEBUG", stream=out)
    log = logging.getLogger("mds.test")
    log.info("connected to %s in %.1f ms", "wss://x", 12.34, extra={"symbols": 3, "feed": "iex"})
    log.debug("multi\nline")
    lines = json_lines(out)
    assert len(lines) == 2
    first = lines[0]
    assert first["msg"] == "connected to wss://x in 12.3 ms"
    assert first["level"] == "INFO" and first["logger"] == "mds.test"
    assert first["symbols"] == 3 and first["feed"] == "iex"
    assert isinstance(first["ts"], str) and first["ts"].endswith("+00:00")
    assert lines[1]["msg"] == "multi\nline"


def test_json_exception_and_unserialisable_extra() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("mds").exception("failed", extra={"obj": object(), "when": {1: 2}})
    (line,) = json_lines(out)
    assert "ValueError: boom" in str(line["exc"])
    assert str(line["obj"]).startswith("<object object")
    assert line["when"] == {"1": 2}


def test_level_filters_records() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    logging.getLogger("mds").info("hidden")
    logging.getLogger("mds").warning("shown")
    assert [line["msg"] for line in json_lines(out)] == ["shown"]


def test_secrets_are_redacted_everywhere() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", secrets=[SECRET, KEY, "", "ab"], stream=out)
    log = logging.getLogger("adapters.somewhere")
    log.warning("auth with %s / %s", KEY, SECRET)
    log.warning(f"inline {SECRET}")
    log.warning("extra", extra={"url": f"https://u:{SECRET}@host/"})
    try:
        raise RuntimeError(f"server echoed {SECRET}")
    except RuntimeError:
        log.exception("failed")
    text = out.getvalue()
    assert SECRET not in text and KEY not in text
    lines = json_lines(out)
    assert lines[0]["msg"] == "auth with *** / ***"
    assert lines[1]["msg"] == "inline ***"
    assert lines[2]["url"] == "https://u:***@host/"
    assert "server echoed ***" in str(lines[3]["exc"])


def test_short_secrets_are_not_used_for_redaction() -> None:
    redactor = RedactingFilter(["ab", ""])
    assert redactor.redact("abc") == "abc"


def test_console_format_redacts_too() -> None:
    out = io.StringIO()
    redactor = configure_logging("console", "INFO", secrets=[SECRET], stream=out)
    log = logging.getLogger("mds.console")
    log.info("hello %s", SECRET)
    try:
        raise KeyError(SECRET)
    except KeyError:
        log.exception("lookup failed")
    text = out.getvalue()
    assert "hello ***" in text and "mds.console" in text and "lookup failed" in text
    assert SECRET not in text
    redactor.set_secrets(["hello"])
    log.info("hello again")
    assert "*** again" in out.getvalue()


def test_configuring_twice_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "INFO", stream=first)
    configure_logging("json", "INFO", stream=second)
    logging.getLogger("mds").info("once")
    assert first.getvalue() == "" and len(json_lines(second)) == 1


def test_bad_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json"):
        configure_logging("xml", "INFO")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_line_is_capped_and_says_how_much_was_cut(fmt: str) -> None:
    """Issue 11: a positions answer of 10,000 symbols wrote an 80 KB log line."""
    out = io.StringIO()
    configure_logging(fmt, "INFO", stream=out)  # type: ignore[arg-type]
    symbols = [f"S{i:05d}" for i in range(10_000)]
    logging.getLogger("mds").warning("left out: %s", ", ".join(symbols))
    text = out.getvalue()
    assert len(text) < 6_000, len(text)
    assert "left out: S00000, S00001" in text and "characters cut" in text


def test_capped_extras_and_tracebacks_keep_the_error_line() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)

    try:
        raise ValueError("y" * 50_000 + " the real error")
    except ValueError:
        logging.getLogger("mds").exception("failed", extra={"body": "x" * 100_000})
    (line,) = json_lines(out)
    assert len(out.getvalue()) < 12_000
    assert str(line["exc"]).rstrip().endswith("y the real error")
    assert "characters cut" in str(line["body"]) and "characters cut" in str(line["exc"])


def test_console_format_piped_is_one_line_per_record_at_any_length() -> None:
    out = io.StringIO()  # not a terminal, as when piped to a file or `less`
    configure_logging("console", "INFO", stream=out)
    message = "subscriptions: +[" + ", ".join(f"S{i:03d}" for i in range(40)) + "] -[]"
    logging.getLogger("mds.console").info("%s", message)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"INFO     mds.console: {message}")
