"""The chaos soak: a seeded random schedule of faults against the service as real processes,
with invariants checked all along (``mds chaos``, ``pytest -m chaos``). See README.md, "Chaos
soak", and ARCHITECTURE.md."""
