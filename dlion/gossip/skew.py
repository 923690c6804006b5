"""Skew compensation for non-IID partitions: integral feedback on the gossip flow (PI consensus).

`skew_compensation: flow-integral`. Measured on label-skewed hetero-4 it helps dense gossip's models agree but costs
Sparse-Push 1.3 points: there most of the flow into a peer is the pull of its neighbours' stale public copies, which
the integral amplifies. The `sparse-push-skew` preset uses `logit-adjustment` instead (`dlion/trainer.py`:
each peer trains on logits shifted by its log label frequencies), which closed 86% of the skew gap
(`docs/benchmarks.md`).

With label skew, each peer's local update carries a persistent component toward its own classes, b_i. Gossip alone
counters it only by pulling the peers back toward each other, and a pull needs a disagreement: at equilibrium peer i
sits about b_i / (mixing rate) away from the others. Sparse gossip mixes slowly, so the disagreement — and each
peer's loss on the classes it lacks — grows with the compression (the paper's observation). (Rescaling the local loss
by inverse class frequencies would only rebalance the classes a peer has; logit adjustment, which shifts the
training logits by the log frequencies, is a different remedy and the one that worked.)

The rule: each peer integrates the numerator mass that gossip moved into it, round after round (a leaky sum),

    I_i <- (1 - leak) I_i + flow_i          flow_i = received - pushed this round

and adds `gain * I_i` to its numerator before it gossips. This is the integral term of a proportional-integral
consensus controller (gossip being the proportional term): the persistent part of the flow into peer i is exactly
the pull that offsets b_i, so the integral settles where its correction cancels b_i, and the peers agree while each
still follows its own data's noise. With constant biases the disagreement shrinks to leak / (gain + leak) of what
gossip alone leaves.

Why it is safe: push-sum conserves mass, so the flows of one round sum to zero over the peers, and so do the
integrals and the corrections (the leak is linear and keeps that) — up to the mass in flight at the time (messages
in the network, Sparse-Push's debts), which bounds their sum. The network's average model, and hence what the peers
converge to, is not moved by the compensation, only how far apart they are.

The constants: the leak forgets biases that change as the model trains (time constant 1/leak rounds), at the price
of the leak / (gain + leak) left uncancelled; the gain sets how fast the integral acts, and one well below the
gossip's own mixing rate keeps the loop from oscillating.

Test in isolation: tests/test_gossip.py drives it with a fixed mixing matrix and constant biases (no transport) and
through the real gossip on heterogeneous quadratic objectives.
"""
from __future__ import annotations

import numpy as np


class SkewCompensation:
    """Leaky integral of the gossip flow into this peer; its scaled value is added to the numerator each round."""

    def __init__(self, size: int, gain: float, leak: float):
        self.gain = gain
        self.leak = leak
        self.integral = np.zeros(size, np.float64)

    def correction(self) -> np.ndarray:
        """What to add to this peer's numerator before it gossips this round."""
        return self.gain * self.integral

    def observe(self, flow: np.ndarray) -> None:
        """Fold in this round's gossip flow (numerator after receiving minus before pushing)."""
        self.integral *= 1.0 - self.leak
        self.integral += flow
