from adapters.simulated.feed import SimulatedQuoteFeed

__all__ = ["SimulatedQuoteFeed"]
