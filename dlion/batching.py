"""Batching stage: how many samples of the fixed global batch each peer computes per iteration.

Every peer computes the same allocation from the config and, for weighted dynamic batching, from the capacity reports
it received, so no coordinator is needed. A peer's gradient is weighted by its share of the global batch when combined
(the exchange weighs by batch size).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

from dlion import messages
from dlion.schema import option, positive
from dlion.smoothing import Ema
from dlion.stages import StageContext, Strategy

RATE_SPREAD = 16.0  # how far a peer's rate may be from the peers' median before it is clipped


def split_evenly(total: int, peer_ids) -> dict[int, int]:
    """`total` samples over the peers, as equal as integers allow; the remainder goes to the lowest ids."""
    ids = sorted(peer_ids)
    base, extra = divmod(total, len(ids))
    return {pid: base + (1 if i < extra else 0) for i, pid in enumerate(ids)}


def allocate(total: int, rates: dict[int, float], low: int, high: int) -> dict[int, int]:
    """Integers in [low, high] summing to `total`, proportional to `rates` as far as the bounds allow.

    Water-filling: shares proportional to the rates, peers pushed past a bound are pinned there and the rest is
    shared again among the others; then the largest fractional remainders get the leftover units (ties: lower id).
    Raises ValueError if the bounds cannot hold `total`.
    """
    ids = sorted(rates)
    if not low * len(ids) <= total <= high * len(ids):
        raise ValueError(f"cannot split {total} over {len(ids)} peers within [{low}, {high}] each")
    weights = {p: max(float(rates[p]), 0.0) for p in ids}
    if sum(weights.values()) <= 0:
        weights = dict.fromkeys(ids, 1.0)
    pinned: dict[int, float] = {}
    while True:
        free = [p for p in ids if p not in pinned]
        left = total - sum(pinned.values())
        norm = sum(weights[p] for p in free)
        shares = {p: (left * weights[p] / norm if norm > 0 else left / len(free)) for p in free}
        over = {p: high for p, s in shares.items() if s > high}
        under = {p: low for p, s in shares.items() if s < low}
        # pin the side that is violated most first: pinning both at once could overshoot
        if not over and not under:
            break
        if sum(s - high for p, s in shares.items() if p in over) >= sum(low - s for p, s in shares.items()
                                                                         if p in under):
            pinned.update(over)
        else:
            pinned.update(under)
    exact = {**pinned, **shares}
    sizes = {p: min(high, max(low, math.floor(exact[p]))) for p in ids}
    short = total - sum(sizes.values())
    for p in sorted(ids, key=lambda p: (-(exact[p] - math.floor(exact[p])), p)):
        if short == 0:
            break
        if sizes[p] < high:
            sizes[p] += 1
            short -= 1
    return sizes


class FixedBatching(Strategy):
    """Equal shares of the global batch, fixed for the whole run (the BSP baseline)."""

    rate = None  # measures nothing

    def __init__(self, params: Strategy.Params, ctx: StageContext):
        self.peer_id = ctx.peer_id
        self.sizes = split_evenly(ctx.global_batch, ctx.peer_ids)

    def batch_size(self, iteration: int) -> int:
        return self.sizes[self.peer_id]

    def calibrate(self, rate: float) -> None:
        """Fixed shares ignore measurements."""

    def observe(self, iteration: int, batch: int, compute_s: float) -> None:
        """Fixed shares ignore measurements."""


class WeightedBatching(Strategy):
    """Weighted dynamic batching: the global batch split in proportion to the peers' measured compute rates.

    Each peer measures its own rate (samples per second of its busy time: the gradient computation, including any
    emulated throttling, plus its share of the round's own work, such as encoding, exchange and gossip, which costs a
    peer with a fraction of a core more than a small batch does; waits left out; an exponential moving average),
    and reports it to every other peer
    every `retune_every` iterations, and at once when its rate moved by more than `threshold` since its last report.
    A report is sent in iteration i before that iteration's gradients, so once a peer has the gradients of round i
    from a neighbour it also has the neighbour's reports up to round i; every peer then uses, for iteration i + 1,
    the latest report of each peer with a round <= i. In lockstep training all peers therefore compute the same
    allocation without a coordinator. Until every live peer has reported, the split follows the rates the peers
    expected before training (`calibrate`: measured in the warm-up, announced in the hello barrier, so every peer
    holds the same ones), or the configured cores where a live peer announced none: the cores alone leave out what
    a step costs besides its samples, which weighs most on the peers with the smallest shares.
    A peer that left is dropped from the allocation, so the others take over its share of the global batch.
    """

    @dataclass(frozen=True)
    class Params:
        retune_every: int = option(20, check=positive, expect="a positive integer (iterations between reports)")
        threshold: float = option(0.25, check=positive,
                                  expect="a positive fraction (rate change that triggers an early report)")
        smoothing: float = option(0.2, check=lambda x: 0 < x <= 1,
                                  expect="a number in (0, 1]: weight of the newest rate sample in the average")
        min_batch: int = option(1, check=positive, expect="a positive integer (smallest per-peer batch)")
        max_batch: Optional[int] = option(None, check=positive,
                                          expect="a positive integer (largest per-peer batch) or null for no limit")

    def __init__(self, params: Params, ctx: StageContext):
        self.params = params
        self.ctx = ctx
        self.peer_id = ctx.peer_id
        self.ids = tuple(sorted(ctx.peer_ids))
        self.global_batch = ctx.global_batch
        self.high = params.max_batch or ctx.global_batch
        self.cores = dict(ctx.cores)
        self._rate = Ema(params.smoothing)  # own samples/s
        self._reported: float | None = None
        self._own_reports: list[tuple[int, float]] = []  # (round, rate) of our reports, newest last
        self._basis: tuple | None = None
        self.sizes = self._allocate(self.cores)

    @property
    def rate(self) -> float | None:
        return self._rate.value

    def calibrate(self, rate: float) -> None:
        """The rate (samples/s) this peer expects before it has trained: announced in its hellos."""
        self.ctx.transport.expected_rate = rate

    def batch_size(self, iteration: int) -> int:
        rates = self._rates_before(iteration)
        basis = tuple(sorted(rates.items()))
        if basis != self._basis:
            self._basis = basis
            self.sizes = self._allocate(rates)
        return self.sizes[self.peer_id]

    def observe(self, iteration: int, batch: int, compute_s: float) -> None:
        """Fold in this iteration's compute time; report the rate when due (before the round's gradients)."""
        if compute_s <= 0:
            return
        self._rate.update(batch / compute_s)
        due = iteration % self.params.retune_every == 0 or self._reported is None
        moved = self._reported is not None and abs(self.rate - self._reported) > self.params.threshold * self._reported
        if due or moved:
            self._report(iteration)

    def _report(self, iteration: int) -> None:
        self._reported = self.rate
        self._own_reports.append((iteration, self.rate))
        del self._own_reports[:-2]
        for p in self.ctx.live(self.ctx.others):
            self.ctx.transport.send(p, messages.REPORT, iteration, None, {"rate": float(self.rate)})

    def _rates_before(self, iteration: int) -> dict[int, float]:
        """Each live peer's latest reported rate from a round before `iteration`; until all reported, `_expected`."""
        live = self.ctx.live(self.ids)
        rates = {}
        for p in live:
            if p == self.peer_id:
                rate = next((r for rnd, r in reversed(self._own_reports) if rnd < iteration), None)
            else:
                msg = self.ctx.transport.mailbox.latest_before(messages.REPORT, p, iteration)
                rate = None if msg is None else msg.meta["rate"]  # declared a positive finite float
            if rate is None:
                return self._expected(live)
            rates[p] = rate
        return self._plausible(rates)

    def _expected(self, live: list[int]) -> dict[int, float]:
        """The rates the live peers announced before training, or the configured cores if one announced none."""
        rates = {}
        for p in live:
            if p == self.peer_id:
                rate = self.ctx.transport.expected_rate
            else:
                hello = self.ctx.transport.mailbox.latest(messages.HELLO, p)
                rate = 0.0 if hello is None else hello.meta["rate"]  # declared a finite float >= 0
            if not rate:
                return {p: self.cores[p] for p in live}
            rates[p] = rate
        return self._plausible(rates)

    def _plausible(self, rates: dict[int, float]) -> dict[int, float]:
        """Rates clipped to within RATE_SPREAD of the peers' median: a peer that claims an absurd rate cannot take the
        whole batch. The median is the same on every peer, and one peer's claim cannot move it far. (Not the
        configured cores: measured rates are there to follow what the cores do not say, such as a slowed host.)"""
        median = statistics.median(rates.values())
        return {p: min(max(rate, median / RATE_SPREAD), median * RATE_SPREAD) for p, rate in rates.items()}

    def _allocate(self, rates: dict[int, float]) -> dict[int, int]:
        low = min(self.params.min_batch, self.global_batch // len(rates))
        high = max(self.high, -(-self.global_batch // len(rates)))
        return allocate(self.global_batch, rates, low, high)


STRATEGIES = {"fixed": FixedBatching, "weighted": WeightedBatching}
