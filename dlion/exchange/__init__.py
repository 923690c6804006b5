"""Gradient plane: strategies that combine this peer's gradient with its neighbours' for one round."""
from dlion.exchange.dense import DenseExchange, ExchangeResult

STRATEGIES = {"dense": DenseExchange}

__all__ = ["DenseExchange", "ExchangeResult", "STRATEGIES"]
