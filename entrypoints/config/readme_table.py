"""The settings table of README.md, generated from the model's fields."""

from __future__ import annotations

from pydantic_settings import BaseSettings

from entrypoints.config.messages import env_name
from entrypoints.config.values import display


def settings_markdown(settings_cls: type[BaseSettings]) -> str:
    """The settings table for README.md: variable, default, description (Markdown)."""
    rows = ["| Variable | Default | Description |", "|---|---|---|"]
    for field_name, info in settings_cls.model_fields.items():
        name = f"`{env_name(settings_cls, field_name, info)}`"
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        doc_default = extra.get("doc_default")
        if isinstance(doc_default, str):
            default = doc_default
        else:
            default = f"`{display(field_name, info.default)}`"
        description = (info.description or "").replace("|", "\\|")
        rows.append(f"| {name} | {default} | {description} |")
    return "\n".join(rows) + "\n"
