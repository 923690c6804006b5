"""Gradient plane: strategies that combine this peer's gradient with its in-neighbours' for one round."""
from dlion.exchange.dense import DenseExchange
from dlion.exchange.local import NoExchange
from dlion.exchange.prioritized import PrioritizedExchange

STRATEGIES = {"dense": DenseExchange, "prioritized": PrioritizedExchange, "none": NoExchange}

__all__ = ["DenseExchange", "NoExchange", "PrioritizedExchange", "STRATEGIES"]
