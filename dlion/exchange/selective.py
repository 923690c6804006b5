"""Per-link selective exchange with error feedback: what the Gaia and Ako exchanges share.

Each round, each outgoing link of the round's graph adds the round's vector to its own accumulation and sends the
entries a rule picks (Gaia: the significant ones; Ako: one partition) as a sparse vector; the rest stays accumulated
for the link's later rounds, so sent plus kept is exactly everything the link was given. Receivers combine as every
exchange does (`gather`: batch-weighted mean, an entry a neighbour did not send counting as zero from it).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dlion.compression import LinkResidual
from dlion.exchange.dense import RoundExchange
from dlion.stages import ExchangeResult

Picker = Callable[[int, np.ndarray], np.ndarray]  # (destination, its link's accumulation) -> sorted uint32 indices


class SelectiveExchange(RoundExchange):
    """Per-link accumulation; each round a rule (`_picker`) picks the entries each link sends."""

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.residuals: dict[int, LinkResidual] = {}

    def exchange(self, round_: int, grads: np.ndarray, weight: float, compute_s: float = 0.0) -> ExchangeResult:
        self._observe(compute_s)
        pick = self._picker(round_, grads)
        budgets = self._send(round_, lambda dst: self._payload(dst, grads, pick), weight)
        return self._gather(round_, grads, weight, budgets)

    def _picker(self, round_: int, grads: np.ndarray) -> Picker:
        """This round's rule (computed once a round, used for every link)."""
        raise NotImplementedError

    def _payload(self, dst: int, grads: np.ndarray, pick: Picker):
        residual = self.residuals.setdefault(dst, LinkResidual(grads.size))
        residual.add(grads)
        sent = residual.take_at(pick(dst, residual.residual))
        return sent, {"k": int(sent.indices.size)}
