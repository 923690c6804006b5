"""A round's own work: the update a peer computes from its batches, and how the combined update is applied.

With one local step (the default) a round is one optimizer step on the exchanged gradient: the peer's gradient goes to
the exchange, and the combined gradient through the optimizer (BSP's and DLion's rounds). With H > 1 local steps the
peer first takes H optimizer steps on its own batches and exchanges the change of its parameters over the round
(local SGD); the combined change is applied from where the round started by an outer step: plain (rate 1, momentum
0: the peers' weighted mean change) or with Nesterov momentum (DiLoCo). A round's fixed costs (exchange, gossip,
messages, parameter copies) are then paid once per H steps; on a peer with a fraction of a core they cost more than a
small batch's gradient. A peer whose share of the global batch is below `min_step_batch` takes fewer, larger local
steps for about the same samples per round (a step has a fixed cost too). The exchange and gossip strategies do
not change: they see one flat vector per round.

Drift correction (`rounds.drift_correction`, SCAFFOLD's control variates on changes of parameters): on data spread
unevenly, a peer's local steps drift towards its own classes, and the average of the peers' drifting changes is a
poor step. With the correction, each local step also moves the parameters by 1/steps of the last round's
difference between the combined change and the peer's own uncorrected change: over a round, the local path follows
the peers' common direction instead of its own data's. The corrections of all peers sum to zero where the last
combination was their weighted mean, so the combination itself is not biased by them (Karimireddy et al. 2020,
"SCAFFOLD", option II, with changes of parameters in place of gradients times the learning rate, which also holds for
an adaptive optimizer's steps).
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def update_weight(weights: str, batch: int, global_batch: int, peers: int) -> float:
    """What a peer's update counts for in the exchange's weighted mean (`rounds.update_weights`). batch: its batch,
    so the mean is the global batch's gradient (or change), the least noisy where the peers' data are alike. uniform:
    the same for every peer, the mean of the peers' own objectives (as gossip averages models): where data are spread
    unevenly, batch weights tilt the model towards the classes of the peers fastest at computing."""
    return global_batch / peers if weights == "uniform" else float(batch)


def step_batches(batch: int, local_steps: int, min_step_batch: int = 1) -> list[int]:
    """The batch of each local step of a round for a share of `batch`: `local_steps` of it, or fewer of at least
    `min_step_batch` samples each, `local_steps` x `batch` in all."""
    if batch >= min_step_batch:
        return [batch] * local_steps
    total = local_steps * batch
    count = max(1, total // min_step_batch)
    return [total // count + (i < total % count) for i in range(count)]


class OuterStep:
    """SGD with Nesterov momentum on the combined change of parameters (a descent direction, like a gradient), as
    DiLoCo's outer optimizer; rate 1 and momentum 0 apply the change as it is."""

    def __init__(self, learning_rate: float = 1.0, momentum: float = 0.0):
        self.learning_rate, self.momentum = learning_rate, momentum
        self.velocity: np.ndarray | None = None

    def __call__(self, change: np.ndarray) -> np.ndarray:
        """The step to subtract from the round's starting parameters."""
        if not self.momentum:
            return change if self.learning_rate == 1.0 else change * np.float32(self.learning_rate)
        if self.velocity is None:
            self.velocity = np.zeros_like(change)
        self.velocity *= np.float32(self.momentum)
        self.velocity += change
        return np.float32(self.learning_rate) * (change + np.float32(self.momentum) * self.velocity)


class RoundWork:
    """One peer's round: `compute(batch)` -> (mean loss, the update to exchange, compute seconds), then
    `apply(combined)` with the exchange's combination of the peers' updates.

    `trainer`: get_params/set_params (all model variables, trainable first), apply (one optimizer step) and
    num_params; `gradients(batch)` -> (loss, flat gradient, compute seconds) of this peer's next batch."""

    def __init__(self, trainer, gradients: Callable, local_steps: int = 1, outer: OuterStep | None = None,
                 min_step_batch: int = 1, drift_correction: bool = False):
        self.trainer, self.gradients, self.local_steps = trainer, gradients, local_steps
        self.min_step_batch = min_step_batch
        self.outer = outer or OuterStep()
        self.drift_correction = drift_correction and local_steps > 1
        self._start: np.ndarray | None = None  # trainable parameters where the current round started
        self._end: np.ndarray | None = None  # all model variables after its local steps
        self._own: np.ndarray | None = None  # this round's change without the correction
        self.correction: np.ndarray | None = None  # to add to a round's change over its local steps

    def compute(self, batch: int) -> tuple[float, np.ndarray, float]:
        if self.local_steps == 1:
            return self.gradients(batch)
        n = self.trainer.num_params
        self._start = self.trainer.get_params()[:n]
        steps = self.steps(batch)
        per_step = None if self.correction is None else self.correction / np.float32(len(steps))
        losses, compute_s = [], 0.0
        for step_batch in steps:
            loss, grads, seconds = self.gradients(step_batch)
            self.trainer.apply(grads)
            if per_step is not None:
                state = self.trainer.get_params()
                state[:n] -= per_step
                self.trainer.set_params(state)
            losses.append(loss)
            compute_s += seconds
        self._end = self.trainer.get_params()
        change = self._start - self._end[:n]
        if self.drift_correction:
            self._own = change if self.correction is None else change - self.correction
        return float(np.mean(losses)), change, compute_s

    def steps(self, batch: int) -> list[int]:
        return step_batches(batch, self.local_steps, self.min_step_batch)

    def apply(self, combined: np.ndarray) -> None:
        if self.local_steps == 1:
            self.trainer.apply(combined)
            return
        state = self._end  # the non-trainable variables (BatchNorm statistics) stay as the local steps left them
        state[:self.trainer.num_params] = self._start - self.outer(combined)
        self.trainer.set_params(state)
        if self.drift_correction:
            self.correction = combined - self._own
