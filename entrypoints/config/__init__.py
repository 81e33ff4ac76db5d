"""The plumbing behind :mod:`entrypoints.settings` (which holds the model and ``load_settings``):
:mod:`~entrypoints.config.values` (parsing hosts and URLs, redaction, display),
:mod:`~entrypoints.config.sources` (environment, ``.env`` or a given mapping),
:mod:`~entrypoints.config.messages` (variable names, one line per invalid value) and
:mod:`~entrypoints.config.readme_table` (the README's settings table)."""
