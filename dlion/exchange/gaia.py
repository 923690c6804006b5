"""Gaia's significance filter (Hsieh et al., NSDI 2017, "Gaia: Geo-Distributed Machine Learning Approaching LAN
Speeds"): a link carries only the updates that matter against the parameters they change.

Each round, for each outgoing link of the round's graph, the peer adds the round's vector (the gradient, or with
`rounds.local_steps` > 1 the round's change of parameters: Gaia's update proper) to the link's accumulation and
sends the significant entries, those with

    |accumulated update| > threshold_t x |parameter|,   threshold_t = threshold / sqrt(1 + t / decay_rounds)

as a sparse vector; the rest stays accumulated (nothing is dropped: an entry goes once its accumulation is large
enough, or once the threshold has decayed enough). Gaia starts at 1% and lowers the threshold as training converges
and updates shrink, so that they still get through; the square-root decay does that without knowing the learning rate
schedule. The parameters are the model's trainable ones (the first entries of `ModelAccess.get()`, read once a
round); without a model (unit tests) the reference is the accumulation's own root mean square instead of |parameter|.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlion.exchange.dense import RoundParams
from dlion.exchange.selective import Picker, SelectiveExchange
from dlion.schema import option, positive


class GaiaExchange(SelectiveExchange):
    """Gaia: per link, the accumulated entries large against their parameter (decaying threshold), the rest kept."""

    @dataclass(frozen=True)
    class Params(RoundParams):
        threshold: float = option(0.01, check=positive,
                                  expect="a positive number: at round 0, an entry is sent once its accumulated "
                                         "update exceeds this fraction of its parameter in magnitude")
        decay_rounds: float = option(100.0, check=positive,
                                     expect="a positive number of rounds: the threshold at round t is threshold / "
                                            "sqrt(1 + t / decay_rounds)")

    def threshold_at(self, round_: int) -> float:
        return self.params.threshold / math.sqrt(1.0 + round_ / self.params.decay_rounds)

    def _picker(self, round_: int, grads: np.ndarray) -> Picker:
        limit = self.threshold_at(round_)
        if self.ctx.model is None:
            return lambda dst, acc: _above(acc, limit * float(np.sqrt(np.mean(np.square(acc, dtype=np.float64)))))
        bound = limit * np.abs(self.ctx.model.get()[:grads.size])
        return lambda dst, acc: _above(acc, bound)


def _above(acc: np.ndarray, bound) -> np.ndarray:
    return np.flatnonzero(np.abs(acc) > bound).astype(np.uint32)
