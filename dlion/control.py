"""Run control: when a peer stops, and the evaluation protocol that tells all peers together that the target is met.

Every `evaluation.every_iterations` optimizer steps (at the same round numbers on every peer) each peer scores the
fixed evaluation subset, sends the figure to the others and goes on training. It waits for the others' figures of
an evaluation round (up to `evaluation.deadline_s`) only once it is as many rounds past it as the stages' staleness
bound lets a neighbour lag (`lag`), less one: in lockstep (0) right after its own evaluation, as all peers stop at
the same round; with overlapped rounds, a slow evaluator holds up nobody until the stages would wait for it anyway,
and that wait is then timed as evaluation (left out of the training time), not in the next exchange as training; a
peer that trains alone never waits.

The target is met when the mean of every live peer's newest figure reaches it: what the run's time to target reads
(`dlion.analysis`), each figure standing for its peer's model as last scored. (Waiting for one round's figures from
every peer instead would stop a run whose peers train at their own pace only when its slowest peer has got there:
a peer training alone would go on for several times the time to target.) The peer that sees it first tells the
others to stop, with the figures it rests on, each with its round. A peer also stops on a signal, at
`max_iterations` or `max_seconds`, or when another peer's stop holds up: every figure it names is one this peer has
(its own among them; one of a round this peer has not received yet from that peer is judged once it has), it names
every live peer, and their mean reaches the target. A stop that does not hold up is rejected and counted: a peer
cannot end the run with a claim the others cannot check. (A claim can pick among the peers' recent genuine figures,
which moves the mean less than a peer can already move it with a false figure of its own.) Evaluation pauses are
timed, so the run's training time can leave them out.
"""
from __future__ import annotations

import threading
from typing import Callable

from dlion import messages
from dlion.config import Evaluation, Training
from dlion.stages import StageContext

KEEP_EVALUATIONS = 4096  # evaluation rounds whose figures a peer keeps (a float per peer each): a peer that trains
                         # alone may be hundreds of evaluations ahead of a slow one that completes a round later
IDLE_EVERY_S = 0.05  # while waiting for the others' figures, how often the peer does what it does meanwhile (`idle`)


class RunControl:
    """`evaluate()` -> (loss, accuracy) on the evaluation subset; `emit(event, **fields)` logs an event."""

    def __init__(self, training: Training, evaluation: Evaluation, ctx: StageContext,
                 evaluate: Callable[[], tuple[float, float]], emit, stop_event: threading.Event,
                 steps_per_round: int = 1, lag: int | None = 0):
        """`steps_per_round`: optimizer steps per round (rounds.local_steps); the evaluation interval and
        max_iterations count steps, the rounds' numbers (`iteration` here) count rounds. `lag`: the rounds a
        neighbour may lag in the stages (their staleness bound), None if the peer trains alone."""
        self.training = training
        self.lag = lag
        self.deadline_s = evaluation.deadline_s
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
        self.newest: dict[int, tuple[int, float]] = {}  # peer -> (round, accuracy) of its newest figure here
        self._pending: set[int] = set()  # rounds this peer evaluated whose figures it has not waited for yet
        self._floor = 0  # figures of rounds below this were let go
        self._waited_through = -1  # the last evaluation round waited for (each is waited for once)
        self._judged: dict[int, object] = {}  # peer -> the last stop message of it already judged
        self._seen_stop: dict[int, tuple[object, float]] = {}  # peer -> its latest stop message, and when first seen
        # what the peer does meanwhile when it waits for the others' figures, every IDLE_EVERY_S, with the round it
        # goes on with (the rejoin stage answers requests: a restarted peer need not wait for the next round)
        self.idle: Callable[[int], None] | None = None

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
        claimed = messages.parse_figures(msg.meta["figures"])  # declared well-formed
        self._absorb()
        if self._seen_stop.get(peer, (None, 0.0))[0] is not msg:
            self._seen_stop[peer] = (msg, self.clock())
        if self.clock() < self._seen_stop[peer][1] + self.deadline_s and any(
                p != self.ctx.peer_id and round_ > self.newest.get(p, (-1, 0.0))[0] for p, (round_, _) in claimed.items()):
            return False  # a figure on its way here from its peer: judge the stop once it came (or at the deadline)
        self._judged[peer] = msg
        target = self.training.target_accuracy
        needed = set(self.ctx.live(self.ctx.others)) | {self.ctx.peer_id, peer}
        if unknown := {p: f for p, f in claimed.items() if self.figures.get(f[0], {}).get(p) != f[1]}:
            problem = f"its figures {unknown} are not among this peer's recent ones"
        elif not needed <= claimed.keys():
            problem = f"its figures leave out peers {sorted(needed - claimed.keys())}"
        elif target is None or sum(acc for _, acc in claimed.values()) / len(claimed) < target:
            problem = f"its figures {claimed} do not reach the target {target}"
        else:
            return True
        self.transport.reject(msg, "stop evidence", problem)
        return False

    def after(self, iteration: int) -> str | None:
        """After `iteration` rounds: evaluate when due; "target" if the mean of the live peers' newest figures
        reaches it, and the run stops there."""
        if iteration % self.every == 0:
            self._evaluate(iteration)
        self._wait_for_figures(iteration)
        reached = self._reached()
        if reached is None or not self.training.stop_at_target:
            return None
        # numbered by its oldest figure's round, which no receiver has passed (its own figure is among them): a peer
        # far behind would refuse a stop numbered by this peer's round as beyond its window
        self._broadcast(messages.STOP, min(round_ for round_, _ in reached.values()),
                        {"figures": messages.format_figures(reached)})
        return "target"

    def _evaluate(self, iteration: int) -> None:
        """Score the evaluation subset and share it; nobody waits for the others' figures."""
        began = self.clock()
        train_s = began - self.started - self.eval_s
        loss, acc = self.evaluate()
        self._broadcast(messages.EVAL, iteration, {"acc": float(acc)})
        self._file(self.ctx.peer_id, iteration, float(acc))
        self._pending.add(iteration)
        figures = self._absorb()[iteration]
        mean = sum(figures.values()) / len(figures)
        self.eval_s += self.clock() - began
        self.emit("eval", it=iteration, acc=round(float(acc), 5), loss=round(float(loss), 5), mean_acc=round(mean, 5),
                  peers_reported=len(figures), train_s=round(train_s, 3), eval_s=round(self.eval_s, 3))

    def _wait_for_figures(self, iteration: int) -> None:
        """Wait (timed as evaluation) for the live peers' figures of the evaluation rounds `lag` - 1 or more rounds
        back (lockstep: this one) that are not all in yet; for each round once."""
        if self.lag is None:
            return
        # one round before the stages would stall on a neighbour that is still evaluating: its evaluation is then
        # waited out here, as evaluation, not in the next exchange, as training
        due = [r for r in self._pending if self._waited_through < r <= iteration - max(0, self.lag - 1)]
        if not due:
            return
        self._waited_through = max(due)
        self._pending.difference_update(due)
        began = self.clock()
        deadline = began + self.deadline_s
        while True:
            until = deadline if self.idle is None else min(deadline, self.clock() + IDLE_EVERY_S)
            if self.transport.mailbox.wait_for(messages.EVAL, max(due), self.ctx.live(self.ctx.others), until) \
                    or until >= deadline:
                break
            self.idle(iteration)
        self.eval_s += self.clock() - began

    def _absorb(self) -> dict[int, dict[int, float]]:
        """Fold in the other peers' figures that have arrived (floats in [0, 1]), and let the oldest rounds go."""
        for p in self.ctx.others:
            for round_, msg in self.transport.mailbox.held(messages.EVAL, p).items():
                if round_ >= self._floor:
                    self._file(p, round_, msg.meta["acc"])
        if len(self.figures) > KEEP_EVALUATIONS:
            for old in sorted(self.figures)[:-KEEP_EVALUATIONS]:
                del self.figures[old]
                self._pending.discard(old)
            self._floor = min(self.figures)
        return self.figures

    def _file(self, peer: int, round_: int, acc: float) -> None:
        self.figures.setdefault(round_, {})[peer] = acc
        if round_ >= self.newest.get(peer, (-1, 0.0))[0]:
            self.newest[peer] = (round_, acc)

    def _reached(self) -> dict[int, tuple[int, float]] | None:
        """Every live peer's newest figure, if each has one and their mean reaches the target."""
        target = self.training.target_accuracy
        live = [*self.ctx.live(self.ctx.others), self.ctx.peer_id]
        self._absorb()
        if target is None or any(p not in self.newest for p in live):
            return None
        newest = {p: self.newest[p] for p in live}
        return newest if sum(acc for _, acc in newest.values()) / len(newest) >= target else None

    def _broadcast(self, kind: str, round_: int, meta: dict | None = None) -> None:
        for p in self.ctx.live(self.ctx.others):
            self.transport.send(p, kind, round_, None, meta)
