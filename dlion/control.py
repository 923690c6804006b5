"""Run control: when a peer stops, and the evaluation protocol that tells all peers together that the target is met.

Every `evaluation.every_iterations` optimizer steps (at the same round numbers on every peer) each peer scores the
fixed evaluation subset and sends the figure to the others, and goes on training: nobody waits for anyone's
evaluation, so a slow evaluator holds up nobody (only one round's figures are comparable, and they come in as the
peers reach that round). Once every live peer's figure of a round is in and their mean reaches the target, the peer
that sees it first tells the others to stop, with the figures it rests on. A peer also stops on a signal, at
`max_iterations` or `max_seconds`, or when another peer's stop holds up: its figures agree with every figure of that
round this peer has itself (its own among them, so a stop for a round this peer has not evaluated yet waits until it
has), and their mean reaches the target. A stop that does not hold up is rejected and counted; a peer cannot end the
run with a claim the others can check. Evaluation pauses are timed, so the run's training time can leave them out.
"""
from __future__ import annotations

import threading
from typing import Callable

from dlion import messages
from dlion.config import Evaluation, Training
from dlion.stages import StageContext

KEEP_EVALUATIONS = 32  # evaluation rounds whose figures a peer keeps: to complete as the slower peers report, and
                       # to check others' stops against


class RunControl:
    """`evaluate()` -> (loss, accuracy) on the evaluation subset; `emit(event, **fields)` logs an event."""

    def __init__(self, training: Training, evaluation: Evaluation, ctx: StageContext,
                 evaluate: Callable[[], tuple[float, float]], emit, stop_event: threading.Event,
                 steps_per_round: int = 1):
        """`steps_per_round`: optimizer steps per round (rounds.local_steps); the evaluation interval and
        max_iterations count steps, the rounds' numbers (`iteration` here) count rounds."""
        self.training = training
        self.steps_per_round = steps_per_round
        self.every = max(1, evaluation.every_iterations // steps_per_round)  # in rounds
        self.ctx = ctx
        self.transport = ctx.transport
        self.evaluate = evaluate
        self.emit = emit
        self.stop_event = stop_event
        self.clock = ctx.clock
        self.started = self.clock()
        self.eval_s = 0.0  # time spent evaluating so far
        self.figures: dict[int, dict[int, float]] = {}  # eval round -> {peer: accuracy} this peer has, recent rounds
        self._decided: set[int] = set()  # eval rounds whose figures were all in and judged against the target
        self._judged: dict[int, object] = {}  # peer -> the last stop message of it already judged

    def start(self, elapsed: float = 0.0, eval_s: float = 0.0) -> None:
        """Start the clock; a resumed run starts with the time its checkpoint had already spent."""
        self.started, self.eval_s = self.clock() - elapsed, eval_s

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def stop_reason(self, iteration: int) -> str | None:
        """Why to stop before `iteration`, or None to go on."""
        tr = self.training
        if self.stop_event.is_set():
            return "signal"
        if tr.max_iterations is not None and iteration * self.steps_per_round >= tr.max_iterations:
            return "max_iterations"
        if tr.max_seconds is not None and self.elapsed >= tr.max_seconds:
            return "max_seconds"
        if any(self._stop_holds(p) for p in self.ctx.others):
            return "target"
        return None

    def _stop_holds(self, peer: int) -> bool:
        """Whether `peer`'s latest stop is borne out by the figures this peer has (see the module docstring)."""
        msg = self.transport.mailbox.latest(messages.STOP, peer)
        if msg is None or self._judged.get(peer) is msg:
            return False
        if msg.round not in self.figures and msg.round > max(self.figures, default=-1):
            return False  # not evaluated that round yet: judge it then
        self._judged[peer] = msg
        claimed = messages.parse_figures(msg.meta["figures"])  # declared well-formed
        known = self._gather(msg.round) if self.ctx.peer_id in self.figures.get(msg.round, {}) else None
        target = self.training.target_accuracy
        if known is None:
            problem = f"round {msg.round} is not among this peer's recent evaluations"
        elif any(claimed.get(p) != acc for p, acc in known.items()):
            problem = f"its figures {claimed} disagree with this peer's {known}"
        elif peer not in claimed or target is None or sum(claimed.values()) / len(claimed) < target:
            problem = f"its figures {claimed} do not reach the target {target}"
        else:
            return True
        self.transport.reject(msg, "stop evidence", problem)
        return False

    def after(self, iteration: int) -> str | None:
        """After `iteration` rounds: evaluate when due; "target" if all the peers' figures of an evaluated round are
        in and their mean met it, and the run stops there."""
        if iteration % self.every == 0:
            self._evaluate(iteration)
        reached = self._reached()
        if reached is None or not self.training.stop_at_target:
            return None
        self._broadcast(messages.STOP, reached, {"figures": messages.format_figures(self.figures[reached])})
        return "target"

    def _evaluate(self, iteration: int) -> None:
        """Score the evaluation subset and share it; nobody waits for the others' figures."""
        began = self.clock()
        train_s = began - self.started - self.eval_s
        loss, acc = self.evaluate()
        self._broadcast(messages.EVAL, iteration, {"acc": float(acc)})
        figures = self.figures.setdefault(iteration, {})
        figures[self.ctx.peer_id] = float(acc)
        for old in sorted(self.figures)[:-KEEP_EVALUATIONS]:
            del self.figures[old]
            self._decided.discard(old)
        self._gather(iteration)
        mean = sum(figures.values()) / len(figures)
        self.eval_s += self.clock() - began
        self.emit("eval", it=iteration, acc=round(float(acc), 5), loss=round(float(loss), 5), mean_acc=round(mean, 5),
                  peers_reported=len(figures), train_s=round(train_s, 3), eval_s=round(self.eval_s, 3))

    def _gather(self, round_: int) -> dict[int, float]:
        """Add the other peers' figures of evaluation round `round_` that have arrived (floats in [0, 1])."""
        figures = self.figures.setdefault(round_, {})
        arrived = self.transport.mailbox.peek(messages.EVAL, round_, self.ctx.others)
        figures.update({p: m.meta["acc"] for p, m in arrived.items()})
        return figures

    def _reached(self) -> int | None:
        """The first round this peer evaluated whose figures from every live peer are now in, if their mean
        reaches the target (each such round is judged once)."""
        target = self.training.target_accuracy
        live = set(self.ctx.live(self.ctx.others)) | {self.ctx.peer_id}
        for round_ in sorted(self.figures):
            if round_ in self._decided or self.ctx.peer_id not in self.figures[round_]:
                continue
            figures = self._gather(round_)
            if not live <= figures.keys():
                continue
            self._decided.add(round_)
            accs = [figures[p] for p in live]
            if target is not None and sum(accs) / len(accs) >= target:
                return round_
        return None

    def _broadcast(self, kind: str, round_: int, meta: dict | None = None) -> None:
        for p in self.ctx.live(self.ctx.others):
            self.transport.send(p, kind, round_, None, meta)
