"""Run control: when a peer stops, and the evaluation protocol that tells all peers together that the target is met.

Every `evaluation.every_iterations` each peer scores the fixed evaluation subset, sends the figure to the others and
waits (up to `evaluation.deadline_s`) for theirs of the same round: every peer evaluates at the same iteration counts,
so only one round's figures are comparable. When every live peer reported and their mean reaches the target, the peer
tells the others to stop. A peer also stops on a signal, at `max_iterations` or `max_seconds`, or when another peer
said stop. Evaluation pauses are timed, so the run's training time can leave them out.
"""
from __future__ import annotations

import threading
from typing import Callable

from dlion import messages
from dlion.config import Evaluation, Training
from dlion.stages import StageContext


class RunControl:
    """`evaluate()` -> (loss, accuracy) on the evaluation subset; `emit(event, **fields)` logs an event."""

    def __init__(self, training: Training, evaluation: Evaluation, ctx: StageContext,
                 evaluate: Callable[[], tuple[float, float]], emit, stop_event: threading.Event):
        self.training = training
        self.every = evaluation.every_iterations
        self.deadline_s = evaluation.deadline_s
        self.ctx = ctx
        self.transport = ctx.transport
        self.evaluate = evaluate
        self.emit = emit
        self.stop_event = stop_event
        self.clock = ctx.clock
        self.started = self.clock()
        self.eval_s = 0.0  # time spent evaluating so far

    def start(self) -> None:
        self.started, self.eval_s = self.clock(), 0.0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def stop_reason(self, iteration: int) -> str | None:
        """Why to stop before `iteration`, or None to go on."""
        tr = self.training
        if self.stop_event.is_set():
            return "signal"
        if tr.max_iterations is not None and iteration >= tr.max_iterations:
            return "max_iterations"
        if tr.max_seconds is not None and self.elapsed >= tr.max_seconds:
            return "max_seconds"
        if any(self.transport.mailbox.latest(messages.STOP, p) is not None for p in self.ctx.others):
            return "target"
        return None

    def after(self, iteration: int) -> str | None:
        """After `iteration` rounds: evaluate when due; "target" if the peers' mean met it and the run stops there."""
        if iteration % self.every or not self._evaluate(iteration) or not self.training.stop_at_target:
            return None
        self._broadcast(messages.STOP, iteration)
        return "target"

    def _evaluate(self, iteration: int) -> bool:
        """Score the evaluation subset, share it, and say whether the peers' mean reached the target."""
        began = self.clock()
        train_s = began - self.started - self.eval_s
        loss, acc = self.evaluate()
        self._broadcast(messages.EVAL, iteration, {"acc": float(acc)})
        waiting_for = self.ctx.live(self.ctx.others)
        got = self.transport.mailbox.take(messages.EVAL, iteration, waiting_for, self.clock() + self.deadline_s)
        accs = [float(acc)] + [m.meta["acc"] for m in got.values()]  # declared a float in [0, 1]
        mean = sum(accs) / len(accs)
        self.eval_s += self.clock() - began
        self.emit("eval", it=iteration, acc=round(float(acc), 5), loss=round(float(loss), 5), mean_acc=round(mean, 5),
                  peers_reported=len(accs), train_s=round(train_s, 3), eval_s=round(self.eval_s, 3))
        target = self.training.target_accuracy
        return target is not None and len(got) == len(waiting_for) and mean >= target

    def _broadcast(self, kind: str, round_: int, meta: dict | None = None) -> None:
        for p in self.ctx.live(self.ctx.others):
            self.transport.send(p, kind, round_, None, meta)
