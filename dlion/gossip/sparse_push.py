"""Sparse-Push: push-sum gossip that sends only the top-k of the model's change against a public copy per link.

CHOCO-style compressed gossip (public copies updated by top-k, error feedback, a consensus step size) on the push-sum
engine of `pushsum.py`, which handles the weights, de-biasing, deadlines and missed rounds. Per round and
out-neighbour j, with the weight dw = gamma * w / (|out| + 1) the engine pushes:

- Public copy. The link i -> j has a public copy v of i's model z = x / w, held alike by i and j. The message sets
  the k = ceil(fraction * n) entries that matter most (below) to their current values: a `wire.Sparse` "x" with
  strictly increasing indices; both copies take the values as sent. j adds dw * v (after the update) to its
  numerator and dw to w. With `half_precision` (the default) the owed mass goes as float16 (what rounding leaves
  stays owed, so the books stay exact), and so do the values while rounding them adds under a tenth of the change
  they make; once the changes get that small, as when the peers agree, they go as float32, so consensus is still
  exact. In training an entry takes 6 bytes (a 16-bit index gap, `wire.Sparse`'s encoding of sorted indices, and
  two float16) instead of 12: twice the entries for the same bytes. Absolute values rather than steps
  (v += rounded(z - v)) keep a lost message harmless: its entries are simply stale until sent again, where a lost
  step would leave the receiver's copy off for good.
- Debt. i takes dw * z (z as sent, float32) out of its numerator, so pushing leaves its own model as it is; the
  shortfall dw * (z - v) of what j got is the link's debt, kept by i (float64). The message also carries "owed":
  for each index sent, the debt on that entry, which j adds to its numerator and i clears. The score of an entry is
  the debt it would carry if not sent now, |debt + dw * (z - v)|: entries whose copy lags most, or that have been
  owed longest, go first. Numerator mass (sum of x, plus all debts, plus what is in flight) is conserved exactly:
  nothing is dropped, only delayed.
- Weight. The running weight sum goes in meta with every message, also when no entry differs and the sparse part is
  empty: the weight must mix every round for x / w to stay unbiased, and its share of dw * v is paid now.
- The first message of a link, and every `refresh_every`-th one, carries the whole model densely (resetting both
  copies), so copies start from the truth rather than from zero, which would drag receivers' z towards zero; with
  `half_precision` in float16 where it fits (half the bytes of a link's most expensive message), what rounding
  leaves going into the debt like any copy's lag, repaid by the sparse messages' "owed". When 2k >= n the model
  always goes densely (as `exchange.prioritized` does), in float32, with any debt as a dense "owed".

Why a debt instead of the textbook consensus step x <- x + gamma (sum of mixing-weighted public copies - x_hat):
there the sender takes its own public copy out of x rather than its model, which keeps the copy's error in its own
model and adds gamma / (|out| + 1) of it again every round. With top-k of a small fraction, an entry waits about
1/fraction rounds to be sent, so that error compounds faster than compression removes it. Measured with 4 peers,
random-walk drift on every entry and 0.5% of the entries per link and round: the peers' disagreement grew without
bound for gamma 0.25 to 1 and, at gamma 0.1, as fast as with no gossip at all; with the debt it stayed within a
third of that for every gamma. Paying the debt costs 4 bytes per entry sent (12 in all with index and value).

Why copies of z rather than of x (CHOCO compresses the iterate): on an irregular time-varying graph the push-sum
weights, and with them x = w z, change every round even once the models agree, so a copy of x chases a moving
target and consensus stalls short of the average; z stops moving, so its copies converge and gossip becomes exact.

Why a copy per link rather than one per peer: on a time-varying graph a peer sends to different peers each round, so
one public copy would get updates that some of its holders never see. Memory: a copy per link used at both ends,
plus a debt per out-link.

Lost messages: the engine restores their weight with the link's next message, valued at the receiver's copy; what
cannot be restored is the debt they paid, and the entries they updated stay stale at the receiver until sent again
or refreshed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from dlion.compression import fits_half, half_when_coarse, rounded, top_k_indices
from dlion.gossip.pushsum import PushSum, _Link
from dlion.schema import option, positive
from dlion.stages import StageContext
from dlion.transport.wire import Sparse


SPARSE_DTYPES = (np.float16, np.float32)


class SparsePush(PushSum):
    """Push-sum with top-k updates of per-link public copies of the model, per-link debts, periodic dense refreshes."""

    DENSE_DTYPES = SPARSE_DTYPES  # a sparse link's dense refreshes go in float16

    @dataclass(frozen=True)
    class Params(PushSum.Params):
        gamma: float = option(0.25, check=lambda x: 0 < x <= 1,
                              expect="a number in (0, 1]: consensus step size (share of the push-sum mixing applied "
                                     "each round)")
        fraction: float = option(0.01, check=lambda x: 0 < x <= 1,
                                 expect="a number in (0, 1]: share of the model's entries sent per link and round")
        refresh_every: Optional[int] = option(1000, check=positive,
                                              expect="a positive integer (messages of a link between dense refreshes "
                                                     "of its public copy), or null for never after the first")
        half_precision: bool = option(True, expect="true or false: send a sparse update's values and owed mass as "
                                                   "float16 (6 bytes per entry with the index instead of 10), and a "
                                                   "sparse link's dense refreshes too (copies and debts stay exact)")

    def __init__(self, params: Params, ctx: StageContext):
        super().__init__(params, ctx)
        self.gamma = params.gamma

    def _outgoing(self, link: _Link, z32: np.ndarray, dw: float) -> tuple[dict, np.ndarray]:
        n = z32.size
        k = math.ceil(self.params.fraction * n)
        every = self.params.refresh_every
        if link.copy is None or 2 * k >= n or (every is not None and (link.seq - 1) % every == 0):
            # float16 only where later messages are sparse: their owed entries repay what rounding left, where an
            # always-dense link would have to send it as a dense float32 "owed" every round
            sent = rounded(z32, self.params.half_precision and 2 * k < n)
            tensors = {"x": sent}
            if np.any(link.debt):
                owed = np.asarray(link.debt, np.float32)
                tensors["owed"] = owed
                link.debt = link.debt - owed
            link.copy = sent.astype(np.float32)  # exactly the receiver's copy; what rounding left is owed below
        else:
            pending = link.debt + dw * z32 - dw * link.copy
            score = np.abs(pending)
            idx = top_k_indices(score, k)
            idx = idx[score[idx] > 0]
            values, owed = self._values(z32[idx], link.copy[idx]), self._owed(link.debt[idx])
            link.debt[idx] -= owed  # exactly what the receiver adds; what rounding left stays owed
            link.copy[idx] = values  # exactly the receiver's copy
            tensors = {"x": Sparse(idx, values, n), "owed": owed}
        link.debt = link.debt + dw * z32 - dw * link.copy
        return tensors, dw * z32

    def _values(self, values: np.ndarray, copy: np.ndarray) -> np.ndarray:
        """The new copy values as sent (`compression.half_when_coarse` with `half_precision`, else float32)."""
        return half_when_coarse(values, copy) if self.params.half_precision else values.astype(np.float32)

    def _owed(self, owed: np.ndarray) -> np.ndarray:
        """The owed mass as sent: float16 with `half_precision` (what rounding leaves stays owed), unless it would
        overflow float16."""
        return owed.astype(np.float16 if self.params.half_precision and fits_half(owed) else np.float32)

    def _tensor_problem(self, msg, link: _Link) -> tuple[str, str] | None:
        x, owed = msg.tensors["x"], msg.tensors.get("owed")
        if not isinstance(x, Sparse):
            if owed is not None and not (isinstance(owed, np.ndarray) and owed.shape == self.x.shape
                                         and owed.dtype == np.float32):
                return "shape", f"expected 'owed' as float32 of {self.x.size} entries with a dense 'x'"
            return super()._tensor_problem(msg, link)
        if (x.size != self.x.size or x.values.dtype not in SPARSE_DTYPES
                or not bool((x.indices[1:] > x.indices[:-1]).all())):
            return "shape", f"expected a float16/32 sparse 'x' of size {self.x.size} with strictly increasing indices"
        if not (isinstance(owed, np.ndarray) and owed.shape == x.values.shape and owed.dtype in SPARSE_DTYPES):
            return "shape", "expected 'owed' as float16/32 with one entry per index of 'x'"
        if link.copy is None:
            return "no copy", "a sparse update on a link whose public copy we lack (we missed its dense message)"
        return None

    def _incoming(self, link: _Link, msg, dw: float) -> np.ndarray:
        x, owed = msg.tensors["x"], msg.tensors.get("owed")
        if isinstance(x, Sparse):
            link.copy[x.indices] = x.values
            mass = dw * link.copy
            mass[x.indices] += owed
            return mass
        link.copy = np.array(x, np.float32)
        return dw * link.copy if owed is None else dw * link.copy + owed
