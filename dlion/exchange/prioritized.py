"""Per-link prioritized gradient exchange (DLion's gradient plane): each link carries what it can, largest first.

Each round, for each outgoing link of the round's graph (to every other peer on the default full mesh), the peer
sends the `k` largest-magnitude entries of (gradient + that link's residual) as a sparse vector and keeps the rest in
the residual (error feedback: nothing is dropped, it waits for a later round; on a time-varying graph, for the link's
next round). `k` is the link's budget for the round:

    k = bandwidth estimate x time budget / 64 bits per entry (uint32 index + float32 value), within [min_entries, n]

(64 bits is the most an entry takes: the wire sends sorted indices as 16-bit gaps where they fit, 48 bits in all,
so a message usually leaves a quarter of its time budget unused.)

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

from dlion.exchange.dense import KIND, ExchangeResult, gather
from dlion.schema import option, positive
from dlion.transport.estimate import MIN_SAMPLE_BYTES
from dlion.transport.wire import Sparse

BITS_PER_ENTRY = 64
SAMPLE_STRIDE = 64  # top-k threshold from every 64th magnitude, then an exact pass over the candidates


def top_k_indices(magnitudes: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the `k` largest entries of `magnitudes` (exact), in about one pass for small k."""
    n = magnitudes.size
    if k >= n:
        return np.arange(n, dtype=np.uint32)
    sample = magnitudes[::SAMPLE_STRIDE]
    # a threshold a little below the sample's k-th largest keeps >= k candidates almost always; check anyway
    want = min(sample.size, math.ceil(k * sample.size / n * 1.5) + 1)
    threshold = np.partition(sample, sample.size - want)[sample.size - want]
    candidates = np.flatnonzero(magnitudes >= threshold)
    if candidates.size < k:
        candidates = np.arange(n)
    top = candidates[np.argpartition(magnitudes[candidates], candidates.size - k)[candidates.size - k:]]
    return np.sort(top).astype(np.uint32)


class LinkResidual:
    """Error feedback for one link: what was not sent yet. Sent plus residual equals everything put in, exactly."""

    def __init__(self, size: int):
        self.residual = np.zeros(size, np.float32)

    def take(self, grads: np.ndarray, k: int) -> np.ndarray | Sparse:
        """Add `grads`, remove and return the `k` largest entries (all of them, densely, if that is not larger)."""
        acc = self.residual
        acc += grads
        if 2 * k >= acc.size:
            self.residual = np.zeros_like(acc)
            return acc
        idx = top_k_indices(np.abs(acc), k)
        values = acc[idx]
        acc[idx] = 0.0
        return Sparse(idx, values, acc.size)


class PrioritizedExchange:
    """Per-link budgeted top-k with error feedback; batch-weighted combination with a round deadline."""

    @dataclass(frozen=True)
    class Params:
        deadline_s: float = option(5.0, check=positive, expect="a positive number of seconds")
        time_budget_s: Optional[float] = option(
            None, check=positive, expect="a positive number of seconds per iteration, or null for the peer's own "
                                         "compute time per iteration")
        min_entries: int = option(MIN_SAMPLE_BYTES * 8 // BITS_PER_ENTRY, check=positive,
                                  expect="a positive integer (entries sent per link at least; the default keeps "
                                         "messages large enough to measure the link)")
        smoothing: float = option(0.3, check=lambda x: 0 < x <= 1,
                                  expect="a number in (0, 1]: weight of the newest compute time in the budget")

    def __init__(self, params: Params, peer_id: int, transport, topology, link_bandwidths=None):
        self.params = params
        self.peer_id = peer_id
        self.transport = transport
        self.topology = topology
        self.configured = dict(link_bandwidths or {})
        self.residuals: dict[int, LinkResidual] = {}
        self.budget_s: float | None = params.time_budget_s

    def exchange(self, round_: int, grads: np.ndarray, weight: float, compute_s: float = 0.0) -> ExchangeResult:
        budget_s = self._time_budget(compute_s if round_ > 0 else 0.0)  # round 0's compute time is graph tracing
        departed = self.transport.mailbox.departed
        links = {}
        for dst in self.topology.out_neighbours(self.peer_id, round_):
            if dst in departed:
                continue
            bps = self.transport.link_bandwidth(dst) or self.configured.get(dst) or math.inf
            k = max(self.params.min_entries, min(grads.size, int(bps * budget_s / BITS_PER_ENTRY)))
            payload = self.residuals.setdefault(dst, LinkResidual(grads.size)).take(grads, k)
            self.transport.send(dst, KIND, round_, {"g": payload}, {"w": float(weight)})
            sent = payload.indices.size if isinstance(payload, Sparse) else grads.size
            links[dst] = {"k": sent, "bps": None if math.isinf(bps) else round(bps)}
        return gather(self.transport, round_, self.topology.in_neighbours(self.peer_id, round_),
                      self.params.deadline_s, grads, weight, links)

    def _time_budget(self, compute_s: float) -> float:
        if self.params.time_budget_s is not None:
            return self.params.time_budget_s
        if compute_s > 0:
            a = self.params.smoothing
            self.budget_s = compute_s if self.budget_s is None else a * compute_s + (1 - a) * self.budget_s
        return self.budget_s or 0.0
