"""The pure core of market-data-service.

Stdlib only, no I/O, no clock reads: every function that needs the time or randomness takes it as
an argument. import-linter enforces this (see pyproject.toml).
"""
