"""The hexagon's ports: one ``typing.Protocol`` per file, in domain types only.

Adapters do not inherit from these; mypy checks conformance where they are wired.
"""
