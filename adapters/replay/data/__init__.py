"""Recordings shipped with the package (``sample.jsonl.gz``), read via importlib.resources."""
