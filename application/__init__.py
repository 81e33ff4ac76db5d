"""Use cases on ports only, on anyio: stream prices, keep connected, sync subscriptions."""
