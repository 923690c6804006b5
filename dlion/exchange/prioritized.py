"""Per-link prioritized gradient exchange (DLion's gradient plane): each link carries what it can, largest first.

Each round, for each outgoing link of the round's graph (to every other peer on the default full mesh), the peer
sends the `k` largest-magnitude entries of (gradient + that link's residual) as a sparse vector and keeps the rest in
the residual (error feedback: nothing is dropped, it waits for a later round; on a time-varying graph, for the link's
next round). Each round adds the link's budget to its credit of entries:

    credit += bandwidth estimate x time budget / bits per entry, at most n

(64 bits for a uint32 index and a float32 value; 48 with `half_precision`, the default: values go as float16 where
they fit, and what rounding leaves stays in the link's residual, so the books stay exact and the rounding error is
sent in a later round, as any entry left behind is)

and the link sends k = its whole credit once that reaches `min_entries` (then the credit starts again from zero).
A link too slow for `min_entries` every round so sends them every few rounds, never more than its rate allows; in the
rounds between, its message carries no entries (it still tells the receiver the sender's round and batch weight,
which the staleness bound and the weighted mean need). (64 or 48 bits is the most an entry takes: the wire sends
sorted indices as 16-bit gaps where they fit, so a message usually leaves a quarter or a third of its budget unused.)
A link whose budget covers half the vector or more gets it all, densely: 2 bytes an entry with `half_precision`.

The time budget is `time_budget_s` or, by default, this peer's own compute time per iteration (smoothed), so the
exchange takes about as long as the computation whatever the link. The bandwidth estimate is the transport's (the
receiver measures every message on the link and feeds its figure back), starting from the configured rate, so a
budget follows the link's real speed when it changes. Where the sparse form would not be smaller (k >= n/2), the link
gets the whole vector densely and its residual empties.

The receiver combines its own gradient with what its in-neighbours sent by the round's deadline, weighted by batch
size as in the dense exchange; an entry a neighbour did not send counts as zero from it this round (its mass is still
in that neighbour's residual).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from dlion.compression import LinkResidual
from dlion.exchange.dense import RoundExchange, RoundParams
from dlion.schema import option, positive
from dlion.stages import ExchangeResult, StageContext
from dlion.transport.estimate import MIN_SAMPLE_BYTES
from dlion.transport.wire import Sparse

BITS_PER_ENTRY = 64  # the most a sparse entry takes: uint32 index, float32 value
BITS_PER_HALF_ENTRY = 48  # ... with a float16 value


class PrioritizedExchange(RoundExchange):
    """Per-link budgeted top-k with error feedback; batch-weighted combination with a round deadline."""

    @dataclass(frozen=True)
    class Params(RoundParams):
        time_budget_s: Optional[float] = option(
            None, check=positive, expect="a positive number of seconds per iteration, or null for the peer's own "
                                         "compute time per iteration")
        min_entries: int = option(MIN_SAMPLE_BYTES * 8 // BITS_PER_ENTRY, check=positive,
                                  expect="a positive integer (entries sent per link at least; the default keeps "
                                         "messages large enough to measure the link)")
        half_precision: bool = option(True, expect="true or false: send values as float16 where they fit (what "
                                                   "rounding leaves stays in the link's residual)")
        smoothing: float = option(0.3, check=lambda x: 0 < x <= 1,
                                  expect="a number in (0, 1]: weight of the newest compute time in the budget")

    def __init__(self, params: Params, ctx: StageContext):
        super().__init__(params, ctx, params.smoothing)
        self.residuals: dict[int, LinkResidual] = {}
        self.credits: dict[int, float] = {}  # entries each link may carry, accumulated over rounds

    def exchange(self, round_: int, grads: np.ndarray, weight: float, compute_s: float = 0.0) -> ExchangeResult:
        smoothed = self._observe(compute_s)
        budget_s = self.params.time_budget_s if self.params.time_budget_s is not None else smoothed or 0.0
        budgets = self._send(round_, lambda dst: self._payload(dst, grads, budget_s), weight)
        return self._gather(round_, grads, weight, budgets)

    def _payload(self, dst: int, grads: np.ndarray, budget_s: float):
        """The link's message: its credit's worth of the largest entries of gradient + residual, once the credit
        reaches `min_entries`; no entries before."""
        bps = self.ctx.transport.link_bandwidth(dst) or self.ctx.link_bandwidths.get(dst) or math.inf
        bits = BITS_PER_HALF_ENTRY if self.params.half_precision else BITS_PER_ENTRY
        credit = min(grads.size, self.credits.get(dst, 0.0) + bps * budget_s / bits)
        residual = self.residuals.setdefault(dst, LinkResidual(grads.size))
        if credit < min(self.params.min_entries, grads.size):
            self.credits[dst] = credit
            residual.add(grads)
            payload = Sparse(np.empty(0, np.uint32), np.empty(0, np.float32), grads.size)
        else:
            self.credits[dst] = 0.0
            payload = residual.take(grads, int(credit), self.params.half_precision)
        sent = payload.indices.size if isinstance(payload, Sparse) else grads.size
        return payload, {"k": sent, "bps": None if math.isinf(bps) else round(bps)}
