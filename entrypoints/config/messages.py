"""Messages about settings: environment variable names of fields, and a pydantic
``ValidationError`` turned into one line per bad variable (never a secret)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from entrypoints.config.values import SECRET_FIELDS, URL_FIELDS, redact_url, shorten


def env_name(
    settings_cls: type[BaseSettings], field_name: str, info: FieldInfo | None = None
) -> str:
    """The primary environment variable name of a field."""
    info = info if info is not None else settings_cls.model_fields[field_name]
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        if isinstance(first, str):
            return first
    return field_name.upper()


def env_names(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """Every accepted name (primary, alias, and python field name) -> its primary env name."""
    names: dict[str, str] = {}
    for field_name, info in settings_cls.model_fields.items():
        primary = env_name(settings_cls, field_name, info)
        names[field_name] = primary
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    names[choice] = primary
        elif isinstance(alias, str):
            names[alias] = primary
    return names


FRIENDLY: Final[dict[str, str]] = {
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_too_short": "must not be empty",
}


def message(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind in FRIENDLY:
        return FRIENDLY[kind]
    for bound, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if bound in ctx and kind.startswith(("greater", "less")):
            value = ctx[bound]
            return (
                f"must be {op} {value:g}" if isinstance(value, float) else f"must be {op} {value}"
            )
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        return f"must be one of {expected}"
    msg = str(error.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def format_errors(
    settings_cls: type[BaseSettings], error: ValidationError, given: Mapping[str, str] | None
) -> str:
    """One line per problem, each starting with the variable the operator set; values quoted
    (shortened, URLs redacted) unless secret."""
    names = env_names(settings_cls)
    secret_envs = {names[f] for f in SECRET_FIELDS}
    url_envs = {names[f] for f in URL_FIELDS}
    lines: list[str] = []
    for item in error.errors(include_input=False, include_url=False):
        loc = item.get("loc") or ()
        if item.get("type") == "default_factory_not_called":
            continue  # a consequence of another field's error, reported on its own
        if not loc:  # cross-field checks: their messages already start with the variable
            lines.extend(message(item).splitlines())
            continue
        key = str(loc[0])
        primary = names.get(key, key)
        env = name_used(names, primary, given)
        line = f"{env}: {message(item)}"
        if primary not in secret_envs and given is not None:
            raw = given_value(given, key, env)
            if raw is not None:
                shown = redact_url(raw) if primary in url_envs else raw
                line += f" (got {shorten(shown)})"
        lines.append(line)
    return "\n".join(dict.fromkeys(lines))


def name_used(names: Mapping[str, str], primary: str, given: Mapping[str, str] | None) -> str:
    """The variable the operator actually set for a field (an alias such as APCA_API_KEY_ID)."""
    if given is None or primary in given:
        return primary
    for alias, target in names.items():
        if target == primary and alias in given and alias.isupper():
            return alias
    return primary


def given_value(given: Mapping[str, str], key: str, env: str) -> str | None:
    for name in (key, env):
        if name in given:
            return given[name]
    return None


CHECKED_PREFIXES: Final = ("MDS_", "ALPACA_", "APCA_")


def unknown_names(settings_cls: type[BaseSettings], found: Iterable[tuple[str, str]]) -> list[str]:
    """One warning line per ``(name, where)`` with one of our prefixes that no setting reads
    (a typo is otherwise silently ignored), suggesting the closest real name."""
    known = sorted(n for n in env_names(settings_cls) if n.isupper())
    lines = []
    for name, where in found:
        if not name.startswith(CHECKED_PREFIXES) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see `mds run --print-config`"
        lines.append(f"{name} (in {where}) is not a setting and is ignored{hint}")
    return lines
