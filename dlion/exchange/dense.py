"""Dense gradient averaging among neighbours: the BSP baseline, and the rounds and combination rule all exchanges share.

Each round a peer sends its full gradient, with its batch size as weight, to the round's out-neighbours (everyone, on
the default full mesh), then combines its own with every in-neighbour gradient that arrived for this round or an
earlier one and was not used yet. How long it waits is the `staleness` bound: with 0 (the default, BSP) it waits
until each in-neighbour's gradient of this very round is there (lockstep); with s > 0 it waits only for an
in-neighbour that has sent nothing for round t - s or later, so the round's messages travel while the next gradients
are computed. In either case it waits at most the round deadline, and a dead or slow neighbour costs at most that;
the mailbox stops waiting for it altogether after a few missed rounds.

The result is the weighted mean of the gradients used: a gradient of round r, used at round t, weighs its batch size
times (1 + t - r)^(-staleness_exponent). With staleness, a peer first waits up to
`patience` times its own compute time per round for this round's gradients: a gradient that is about to arrive is
worth that wait (fresh gradients make every round count, as in lockstep), and only a neighbour later than that is
left to a later round. A late gradient is still used, for less the staler it is (FedASMU's
staleness-aware weighting; ours is the polynomial decay of asynchronous federated optimisation): it was computed on
parameters that have moved on since, so it points less surely where the model should go now, but it still carries
information from data no other peer holds. With a full mesh, no losses and staleness 0 every peer applies the same
gradient as one large-batch step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from dlion import messages
from dlion.schema import non_negative, option, positive
from dlion.smoothing import Ema
from dlion.stages import ExchangeResult, StageContext, Strategy
from dlion.topology import Topology, TopologySpec
from dlion.transport.wire import Sparse


def staleness_weight(staleness: int, exponent: float) -> float:
    """The share of its batch weight a gradient keeps when used `staleness` rounds after it was computed."""
    return (1.0 + staleness) ** -exponent


def gather(ctx: StageContext, graph, round_: int, params, own: np.ndarray, weight: float,
           budgets: dict | None = None, patience_s: float = 0.0) -> ExchangeResult:
    """Wait as the staleness bound says (at most the round deadline) for the in-neighbours' gradients, and combine
    every one not used yet, up to this round, with ours (`params`: the exchange's deadline_s, staleness and
    staleness_exponent). With staleness, first wait up to `patience_s` for this round's gradients."""
    start = ctx.clock()
    if params.staleness and patience_s > 0:  # fresh gradients are worth a short wait: see RoundParams.patience
        ctx.transport.mailbox.wait_for(messages.GRAD, round_, graph.in_neighbours(ctx.peer_id, round_),
                                       start + patience_s)
    expected = graph.in_neighbours(ctx.peer_id, max(0, round_ - params.staleness))
    got = ctx.transport.mailbox.collect(messages.GRAD, round_, expected, start + params.deadline_s, params.staleness)
    wait_s = ctx.clock() - start
    weighted = [(msg, staleness_weight(round_ - msg.round, params.staleness_exponent))
                for msgs in got.values() for msg in msgs]
    mailbox = ctx.transport.mailbox
    unheard = set()
    if 0 < mailbox.rejoined_at > round_ - params.staleness:  # its first rounds back (`Mailbox.rejoined`; 0: never)
        unheard = set(expected) - got.keys() - mailbox.departed
    total, used = combine(ctx.transport, own, weight, weighted, unheard_weight=len(unheard) * weight)
    return ExchangeResult(total, used, wait_s, budgets or {})


def combine(transport, own: np.ndarray, weight: float, weighted, unheard_weight: float = 0.0) -> tuple[np.ndarray, int]:
    """Weighted mean of our gradient and the neighbours' (dense or sparse 'g', batch weight 'w' in meta, times the
    factor each comes with in `weighted`: (message, factor) pairs), and of zero updates of `unheard_weight` in all:
    for in-neighbours not heard from yet in a rejoined peer's first rounds, so that a round of its own data alone does
    not move it at full weight away from the state it took.

    A message that cannot be combined (wrong size or dtype, non-finite values) is dropped and counted by the
    transport. Returns the mean and how many neighbour gradients went into it.
    """
    usable = [(msg, factor * msg.meta["w"]) for msg, factor in weighted if _usable(transport, msg, own)]
    if not usable and not unheard_weight:
        return own, 0
    total = own * np.float32(weight)
    for msg, w in usable:
        g, w = msg.tensors["g"], np.float32(w)
        if isinstance(g, Sparse):
            total[g.indices] += g.values * w  # strictly increasing, so unique: fancy-index += is exact
        else:
            total += g * w
    total /= np.float32(weight + sum(w for _, w in usable) + unheard_weight)
    return total, len(usable)


def _usable(transport, msg, own: np.ndarray) -> bool:
    """A neighbour's gradient can be combined with ours; if not, the transport drops and counts it."""
    g = msg.tensors["g"]
    values = g.values if isinstance(g, Sparse) else g
    if isinstance(g, Sparse):
        shape_ok = g.size == own.size and bool((g.indices[1:] > g.indices[:-1]).all())
    else:
        shape_ok = g.shape == own.shape
    if shape_ok and values.dtype in (own.dtype, np.float16):
        return True  # finite: the transport dropped anything else
    transport.reject(msg, "shape", f"expected a float32 or float16 gradient 'g' of {own.size} entries (dense, or "
                                   f"sparse with strictly increasing indices)")
    return False


COMPUTE_SMOOTHING = 0.3  # weight of the newest compute time in the patience's average


@dataclass(frozen=True)
class RoundParams:
    """What every exchange says about its rounds: which graph, how long to wait, how stale a gradient may be."""

    deadline_s: float = option(5.0, check=positive, expect="a positive number of seconds")
    staleness: int = option(0, check=non_negative,
                            expect="a non-negative integer: rounds an in-neighbour may lag before the peer waits for "
                                   "it (0: lockstep)")
    staleness_exponent: float = option(0.5, check=non_negative,
                                       expect="a non-negative number: a gradient used s rounds late weighs "
                                              "(1 + s)^-exponent of its batch weight")
    patience: float = option(0.0, check=non_negative,
                             expect="a non-negative number: with staleness, how long to wait for this round's "
                                    "gradients before using older ones, in multiples of the peer's compute time per "
                                    "round")
    graph: Literal["topology", "full"] = option(
        "topology", expect="topology (the round graph of the config's topology block) or full (every link, every "
                           "round)")


class RoundExchange(Strategy):
    """What every exchange shares: its graph (the config's round graph, or every link every round), the peer's
    smoothed compute time per round (the patience's unit; the prioritized exchange's budgets), one gradient message
    per live out-neighbour, and the wait and combination of `gather`."""

    Params = RoundParams

    def __init__(self, params: RoundParams, ctx: StageContext, smoothing: float = COMPUTE_SMOOTHING):
        self.params = params
        self.ctx = ctx
        self.graph = ctx.topology if params.graph == "topology" else Topology(TopologySpec("full"), ctx.peer_ids)
        self._compute_s = Ema(smoothing)

    def _observe(self, compute_s: float) -> float | None:
        """Fold in this round's compute time; the smoothed one (None before the first)."""
        if compute_s > 0:
            self._compute_s.update(compute_s)
        return self._compute_s.value

    def _send(self, round_: int, payload_for, weight: float) -> dict:
        """Send each live out-neighbour of `round_` its gradient message, `payload_for(dst)` -> (tensor 'g', budget
        figures or None); returns the budget figures per destination."""
        budgets = {}
        for dst in self.ctx.live(self.graph.out_neighbours(self.ctx.peer_id, round_)):
            g, budget = payload_for(dst)
            self.ctx.transport.send(dst, messages.GRAD, round_, {"g": g}, {"w": float(weight)})
            if budget is not None:
                budgets[dst] = budget
        return budgets

    def _gather(self, round_: int, grads: np.ndarray, weight: float, budgets: dict | None = None) -> ExchangeResult:
        patience_s = self.params.patience * (self._compute_s.value or 0.0)
        return gather(self.ctx, self.graph, round_, self.params, grads, weight, budgets, patience_s)


class DenseExchange(RoundExchange):
    """Batch-weighted averaging of full gradients with the neighbours (BSP at staleness 0), with a round deadline."""

    def exchange(self, round_: int, grads: np.ndarray, weight: float, compute_s: float = 0.0) -> ExchangeResult:
        self._send(round_, lambda dst: (grads, None), weight)
        self._observe(compute_s)
        return self._gather(round_, grads, weight)
