"""Where the settings come from: the process environment and ``.env``, or a given mapping
(tests, tools) plus an optional env file, chosen per :func:`load_settings` call."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path

from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
)

# Set only for the duration of one ``load_settings(env=...)`` call (per task/thread): lets the
# public ``settings_customise_sources`` hook read a given mapping instead of ``os.environ``.
ENV_OVERRIDE: ContextVar[tuple[Mapping[str, str] | None, Path | str | None] | None] = ContextVar(
    "mds_settings_env_override", default=None
)


class MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = dict(env)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return dict(self._mapping)


def choose_sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
    dotenv_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The sources for ``Settings.settings_customise_sources``, as :data:`ENV_OVERRIDE` asks."""
    override = ENV_OVERRIDE.get()
    if override is None:
        return (init_settings, env_settings, dotenv_settings)
    env, env_file = override
    if env is None:  # the process environment, and .env (or the file given)
        if env_file is None:
            return (init_settings, env_settings, dotenv_settings)
        return (init_settings, env_settings, DotEnvSettingsSource(settings_cls, env_file))
    sources: list[PydanticBaseSettingsSource] = [
        init_settings,
        MappingEnvSource(settings_cls, env),
    ]
    if env_file is not None:
        sources.append(DotEnvSettingsSource(settings_cls, env_file=env_file))
    return tuple(sources)


def dotenv_values(settings_cls: type[BaseSettings], path: Path | str) -> Mapping[str, str]:
    """The variables an env file sets (empty when there is no such file)."""
    if not Path(path).is_file():
        return {}
    source = DotEnvSettingsSource(settings_cls, env_file=path)
    return {k: v for k, v in source.env_vars.items() if v is not None}
