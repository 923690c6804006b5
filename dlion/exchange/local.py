"""No gradient exchange: each peer applies its own gradient (local SGD). The gossip presets use it, since they mix
models rather than gradients (stochastic gradient push)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlion.exchange.dense import ExchangeResult


class NoExchange:
    """No gradient exchange: each peer applies its own gradient (for the gossip presets, which mix models instead)."""

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Params, peer_id: int, transport, topology, link_bandwidths=None):
        pass

    def exchange(self, round_: int, grads: np.ndarray, weight: float, compute_s: float = 0.0) -> ExchangeResult:
        return ExchangeResult(grads, 0, 0, 0.0)
