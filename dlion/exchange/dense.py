"""Dense synchronous gradient averaging among neighbours: the BSP baseline, and the combination rule all exchanges share.

Each round a peer sends its full gradient, with its batch size as weight, to the round's out-neighbours (everyone, on
the default full mesh), then waits for its in-neighbours' until the round deadline. The result is the batch-weighted mean of what arrived (its own always included), so with a
full mesh and no losses every peer applies the same gradient as one large-batch step. A dead or slow neighbour costs
at most the deadline; the mailbox stops waiting for it altogether after a few missed rounds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from dlion.schema import option, positive
from dlion.transport.wire import Sparse

KIND = "grad"


@dataclass(frozen=True)
class ExchangeResult:
    grads: np.ndarray          # the combined gradient to apply
    received: int              # neighbour gradients combined this round
    expected: int              # in-neighbours asked for
    wait_s: float              # time spent waiting for neighbours
    links: dict = field(default_factory=dict)  # per outgoing link: what was sent (entries "k", estimate "bps")


def gather(transport, round_: int, neighbours, deadline_s: float, own: np.ndarray, weight: float,
           links: dict | None = None) -> ExchangeResult:
    """Wait (until the round's deadline) for the in-neighbours' gradients of `round_` and combine them with ours."""
    start = time.monotonic()
    got = transport.mailbox.take(KIND, round_, neighbours, start + deadline_s)
    wait_s = time.monotonic() - start
    total, used = combine(transport, own, weight, got.values())
    return ExchangeResult(total, used, len(neighbours), wait_s, links or {})


def combine(transport, own: np.ndarray, weight: float, messages) -> tuple[np.ndarray, int]:
    """Batch-weighted mean of our gradient and the neighbours' (dense or sparse 'g', weight 'w' in meta).

    A message that cannot be combined (wrong size or dtype, bad weight, non-finite values) is dropped and counted by
    the transport. Returns the mean and how many neighbour gradients went into it.
    """
    usable = [msg for msg in messages if _usable(transport, msg, own)]
    if not usable:
        return own, 0
    total = own * np.float32(weight)
    for msg in usable:
        g, w = msg.tensors["g"], np.float32(msg.meta["w"])
        if isinstance(g, Sparse):
            total[g.indices] += g.values * w  # strictly increasing, so unique: fancy-index += is exact
        else:
            total += g * w
    total /= np.float32(weight + sum(msg.meta["w"] for msg in usable))
    return total, len(usable)


def _usable(transport, msg, own: np.ndarray) -> bool:
    """A neighbour's gradient can be combined with ours; if not, the transport drops and counts it."""
    g, w = msg.tensors.get("g"), msg.meta.get("w")
    values = g.values if isinstance(g, Sparse) else g
    if isinstance(g, Sparse):
        shape_ok = g.size == own.size and bool((g.indices[1:] > g.indices[:-1]).all())
    else:
        shape_ok = isinstance(g, np.ndarray) and g.shape == own.shape
    if not shape_ok or values.dtype != own.dtype:
        transport.reject(msg, f"expected a float32 gradient 'g' of {own.size} entries (dense, or sparse with "
                              f"strictly increasing indices)")
    elif not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 < w < float("inf"):
        transport.reject(msg, f"expected a positive weight 'w', got {w!r}")
    elif not np.isfinite(values).all():
        transport.reject(msg, "gradient has non-finite entries")
    else:
        return True
    return False


class DenseExchange:
    """Synchronous batch-weighted averaging of full gradients with the neighbours (BSP), with a round deadline."""

    @dataclass(frozen=True)
    class Params:
        deadline_s: float = option(5.0, check=positive, expect="a positive number of seconds")

    def __init__(self, params: Params, peer_id: int, transport, topology, link_bandwidths=None):
        self.params = params
        self.peer_id = peer_id
        self.transport = transport
        self.topology = topology

    def exchange(self, round_: int, grads: np.ndarray, weight: float, compute_s: float = 0.0) -> ExchangeResult:
        departed = self.transport.mailbox.departed
        for dst in self.topology.out_neighbours(self.peer_id, round_):
            if dst not in departed:
                self.transport.send(dst, KIND, round_, {"g": grads}, {"w": float(weight)})
        return gather(self.transport, round_, self.topology.in_neighbours(self.peer_id, round_),
                      self.params.deadline_s, grads, weight)
