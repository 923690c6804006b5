"""Dense synchronous gradient averaging among neighbours: the BSP baseline, and the combination rule all exchanges share.

Each round a peer sends its full gradient, with its batch size as weight, to the round's out-neighbours (everyone, on
the default full mesh), then waits for its in-neighbours' until the round deadline. The result is the batch-weighted
mean of what arrived (its own always included), so with a full mesh and no losses every peer applies the same
gradient as one large-batch step. A dead or slow neighbour costs at most the deadline; the mailbox stops waiting for
it altogether after a few missed rounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlion import messages
from dlion.schema import option, positive
from dlion.stages import ExchangeResult, StageContext, Strategy
from dlion.transport.wire import Sparse


def gather(ctx: StageContext, round_: int, deadline_s: float, own: np.ndarray, weight: float,
           budgets: dict | None = None) -> ExchangeResult:
    """Wait (until the round's deadline) for the in-neighbours' gradients of `round_` and combine them with ours."""
    start = ctx.clock()
    got = ctx.transport.mailbox.take(messages.GRAD, round_, ctx.topology.in_neighbours(ctx.peer_id, round_),
                                     start + deadline_s)
    wait_s = ctx.clock() - start
    total, used = combine(ctx.transport, own, weight, got.values())
    return ExchangeResult(total, used, wait_s, budgets or {})


def combine(transport, own: np.ndarray, weight: float, messages_) -> tuple[np.ndarray, int]:
    """Batch-weighted mean of our gradient and the neighbours' (dense or sparse 'g', weight 'w' in meta).

    A message that cannot be combined (wrong size or dtype, non-finite values) is dropped and counted by the
    transport. Returns the mean and how many neighbour gradients went into it.
    """
    usable = [msg for msg in messages_ if _usable(transport, msg, own)]
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
    g = msg.tensors["g"]
    values = g.values if isinstance(g, Sparse) else g
    if isinstance(g, Sparse):
        shape_ok = g.size == own.size and bool((g.indices[1:] > g.indices[:-1]).all())
    else:
        shape_ok = g.shape == own.shape
    if not shape_ok or values.dtype != own.dtype:
        transport.reject(msg, f"expected a float32 gradient 'g' of {own.size} entries (dense, or sparse with "
                              f"strictly increasing indices)")
    elif not np.isfinite(values).all():
        transport.reject(msg, "gradient has non-finite entries")
    else:
        return True
    return False


def send_to_out_neighbours(ctx: StageContext, round_: int, payload_for, weight: float) -> dict:
    """Send each live out-neighbour of `round_` its gradient message, `payload_for(dst)` -> (tensor 'g', budget
    figures or None); returns the budget figures per destination."""
    budgets = {}
    for dst in ctx.live(ctx.topology.out_neighbours(ctx.peer_id, round_)):
        g, budget = payload_for(dst)
        ctx.transport.send(dst, messages.GRAD, round_, {"g": g}, {"w": float(weight)})
        if budget is not None:
            budgets[dst] = budget
    return budgets


class DenseExchange(Strategy):
    """Synchronous batch-weighted averaging of full gradients with the neighbours (BSP), with a round deadline."""

    @dataclass(frozen=True)
    class Params:
        deadline_s: float = option(5.0, check=positive, expect="a positive number of seconds")

    def __init__(self, params: Params, ctx: StageContext):
        self.params = params
        self.ctx = ctx

    def exchange(self, round_: int, grads: np.ndarray, weight: float, compute_s: float = 0.0) -> ExchangeResult:
        send_to_out_neighbours(self.ctx, round_, lambda dst: (grads, None), weight)
        return gather(self.ctx, round_, self.params.deadline_s, grads, weight)
