"""Gradient plane: strategies that combine this peer's gradient with its in-neighbours' for one round."""
from dlion.exchange.ako import AkoExchange
from dlion.exchange.dense import DenseExchange
from dlion.exchange.gaia import GaiaExchange
from dlion.exchange.local import NoExchange
from dlion.exchange.prioritized import PrioritizedExchange

STRATEGIES = {"dense": DenseExchange, "prioritized": PrioritizedExchange, "gaia": GaiaExchange, "ako": AkoExchange,
              "none": NoExchange}

__all__ = ["AkoExchange", "DenseExchange", "GaiaExchange", "NoExchange", "PrioritizedExchange", "STRATEGIES"]
