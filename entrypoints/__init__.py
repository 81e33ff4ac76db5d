"""Entrypoints: settings, the dependency-injector container, the HTTP API and the CLI.

The only layer that wires adapters to use cases.
"""
