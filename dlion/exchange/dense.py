"""Dense synchronous gradient averaging among neighbours: the BSP baseline.

Each round a peer sends its full gradient, with its batch size as weight, to every neighbour, then waits for theirs
until the round deadline. The result is the batch-weighted mean of what arrived (its own always included), so with a
full mesh and no losses every peer applies the same gradient as one large-batch step. A dead or slow neighbour costs
at most the deadline; the mailbox stops waiting for it altogether after a few missed rounds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dlion.schema import option, positive

KIND = "grad"


@dataclass(frozen=True)
class ExchangeResult:
    grads: np.ndarray          # the combined gradient to apply
    received: int              # neighbour gradients combined this round
    expected: int              # neighbours asked for
    wait_s: float              # time spent waiting for neighbours


class DenseExchange:
    """Synchronous batch-weighted averaging of full gradients with the neighbours (BSP), with a round deadline."""

    @dataclass(frozen=True)
    class Params:
        deadline_s: float = option(5.0, check=positive, expect="a positive number of seconds")

    def __init__(self, params: Params, peer_id: int, transport, neighbours):
        self.params = params
        self.peer_id = peer_id
        self.transport = transport
        self.neighbours = tuple(sorted(neighbours))

    def exchange(self, round_: int, grads: np.ndarray, weight: float) -> ExchangeResult:
        for dst in self.neighbours:
            self.transport.send(dst, KIND, round_, {"g": grads}, {"w": float(weight)})
        start = time.monotonic()
        got = self.transport.mailbox.take(KIND, round_, self.neighbours, start + self.params.deadline_s)
        wait_s = time.monotonic() - start
        usable = [(msg.tensors["g"], msg.meta["w"]) for msg in got.values() if self._usable(msg, grads)]
        if not usable:
            return ExchangeResult(grads, 0, len(self.neighbours), wait_s)
        total = grads * np.float32(weight)
        for their, w in usable:
            total += their * np.float32(w)
        total /= np.float32(weight + sum(w for _, w in usable))
        return ExchangeResult(total, len(usable), len(self.neighbours), wait_s)

    def _usable(self, msg, grads: np.ndarray) -> bool:
        """A neighbour's gradient can be combined with ours; if not, the transport drops and counts it."""
        their, w = msg.tensors.get("g"), msg.meta.get("w")
        if not isinstance(their, np.ndarray) or their.shape != grads.shape or their.dtype != grads.dtype:
            self.transport.reject(msg, f"expected a dense float32 gradient 'g' of shape {grads.shape}")
        elif not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 < w < float("inf"):
            self.transport.reject(msg, f"expected a positive weight 'w', got {w!r}")
        elif not np.isfinite(their).all():
            self.transport.reject(msg, "gradient has non-finite entries")
        else:
            return True
        return False
