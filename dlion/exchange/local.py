"""No gradient exchange: each peer applies its own gradient. The gossip presets use it, since they mix models rather
than gradients (stochastic gradient push), and so does training alone."""
from __future__ import annotations

import numpy as np

from dlion.stages import ExchangeResult, StageContext, Strategy


class NoExchange(Strategy):
    """No gradient exchange: each peer applies its own gradient (for the gossip presets, which mix models instead)."""

    def __init__(self, params: Strategy.Params, ctx: StageContext):
        pass

    def exchange(self, round_: int, grads: np.ndarray, weight: float, compute_s: float = 0.0) -> ExchangeResult:
        return ExchangeResult(grads, 0, 0.0)
