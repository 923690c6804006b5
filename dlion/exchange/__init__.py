"""Gradient plane: strategies that combine this peer's gradient with its neighbours' for one round."""
from dlion.exchange.dense import DenseExchange, ExchangeResult
from dlion.exchange.prioritized import PrioritizedExchange

STRATEGIES = {"dense": DenseExchange, "prioritized": PrioritizedExchange}

__all__ = ["DenseExchange", "ExchangeResult", "PrioritizedExchange", "STRATEGIES"]
