"""Rejoining: a peer that fell far behind the others finds them again and continues from their state.

A peer falls behind when it was restarted while the others trained (its round starts from its checkpoint, or 0) or
when its host froze and woke up. Either way it asks the peer furthest ahead for its parameters and optimizer state
(a `rejoin` message, repeated until answered) and waits for them; its hellos and requests do not make the others wait
for it meanwhile. Then it tells every peer it is back from a round a little past the newest it knows of (`back`):
that re-admits it, the others send it every round they start from then on, and they do not wait for it in the
rounds before; one already past that round answers with its own next round, before which the rejoining peer does
not wait for it either. A peer also says hello, once in a while, to peers that departed without a bye: if they are
still there, their answer tells how far they got. Every peer answers rejoin requests.
"""
from __future__ import annotations

import math
import time

from dlion import messages

WAIT_S = 10.0           # how long a rejoining peer waits for the state it asked for
LEAD = 2                # it enters at least this many rounds past the newest it knows of: rounds the others start
                        # after its `back` reached them
BACK_MARGIN_S = 0.2     # and as many more as the others make, at their pace, in the time it took, and this long
REQUEST_EVERY_S = 1.0   # how often it repeats the request meanwhile (one may be lost behind a full queue)
KNOCK_EVERY_S = 1.0     # how often a peer says hello to peers that departed without a bye
RETRY_AFTER_S = 30.0    # after a request nobody answered, how long before a peer tries to catch up again
_POLL_S = 0.01


class Rejoin:
    """One peer's side of rejoining, run from its loop."""

    def __init__(self, ctx, trainer, log, margin: int, catch_up: bool = True, elapsed=lambda: 0.0):
        """`margin`: rounds a peer may lag (the evaluation interval, or the stages' staleness bound if larger); one
        behind by more than that at start (twice that while training, where a slow peer may lag a little) rejoins.
        `catch_up` False: it never does (a peer that trains alone has nobody's state to take); it still answers.
        `elapsed()`: this peer's training time so far, sent with its state, so that a peer restarted from it goes on
        with the others' clock (its time budget, its curves) instead of starting its own from zero."""
        self.ctx, self.trainer, self.log = ctx, trainer, log
        self.elapsed = elapsed
        self.train_s: float | None = None  # the training time of the state taken at the latest rejoin
        self.transport = ctx.transport
        self.margin = margin
        self.catch_up = catch_up
        self._answered: dict[int, int] = {}  # peer -> the round of its last rejoin request answered
        self._next_knock = 0.0
        self._knocked_at = 0.0  # when we last knocked (time.time()): a hello since is an answer
        self._retry_at = 0.0  # no catch-up before this (time.monotonic()) after an unanswered request
        self.at: int | None = None  # the round of the latest rejoin

    def start(self, iteration: int) -> int:
        """The round to start training from (after the hello barrier)."""
        return self._catch_up(iteration, self.margin)

    def step(self, iteration: int) -> int:
        """Once per iteration: knock, answer requests, catch up. Returns the round to go on from."""
        self._knock()
        self._answer(iteration)
        return self._catch_up(iteration, 2 * self.margin)

    def _catch_up(self, iteration: int, margin: int) -> int:
        """Only the source's answer moves the peer (its round is in the answer): what made it ask (a hello, a
        message beyond the window) may be stale, or forged where links are not authenticated."""
        if not self.catch_up:
            return iteration
        ahead, source = self._furthest_ahead()
        if ahead <= iteration + margin or time.monotonic() < self._retry_at:
            return iteration
        state, taken = self._fetch(source, iteration)
        if state is None:
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            self.log.emit("rejoin", at=iteration, was_at=iteration, asked=source, **taken)
            return iteration
        self.train_s = state.meta["train_s"]
        newest = max([state.meta["at"], *self.transport.mailbox.newest_rounds().values()])
        at = max(iteration, newest + self._lead(source, state))
        self.transport.mailbox.advance(at)
        left = self.transport.mailbox.left()
        self.transport.back([p for p in self.ctx.others if p not in left], at)
        self.log.emit("rejoin", at=at, was_at=iteration, asked=source, **taken)
        self.at = at
        return at

    def _furthest_ahead(self) -> tuple[int, int | None]:
        """The highest round a live peer is known to be at (its latest hello says so, or it sent a message of that
        round, even one beyond our window), and that peer. A departed peer counts once it answered a knock: a woken
        peer's own heartbeats may have given up on the others."""
        seen = self.transport.mailbox.newest_rounds()
        departed = self.transport.mailbox.departed
        best = (0, None)
        for p in self.ctx.others:
            hello = self.transport.mailbox.latest(messages.HELLO, p)
            if p in departed and (hello is None or hello.received_at <= self._knocked_at):
                continue  # gone, unless it answered our knock
            at = max(seen.get(p, 0), hello.meta["at"] if hello is not None else 0)
            if at > best[0]:
                best = (at, p)
        return best

    def _knock(self) -> None:
        if (silent := self.transport.mailbox.departed_silently()) and time.monotonic() >= self._next_knock:
            self._knocked_at = time.time()
            self.transport.knock(silent)
            self._next_knock = time.monotonic() + KNOCK_EVERY_S

    def _lead(self, source: int, state) -> int:
        """How many rounds past the newest it knows of a rejoining peer comes back at: LEAD, plus the rounds the
        source makes, at the pace its hello and its answer show, since the answer and for BACK_MARGIN_S more (the
        `back` must reach the others before they start that round), at most the margin more."""
        hello = self.transport.mailbox.latest(messages.HELLO, source)
        if hello is None or state.received_at <= hello.received_at:
            return LEAD
        rate = max(0.0, (state.meta["at"] - hello.meta["at"]) / (state.received_at - hello.received_at))
        return LEAD + min(self.margin, math.ceil(rate * (time.time() - state.received_at + BACK_MARGIN_S)))

    def _fetch(self, source: int, round_: int) -> tuple[object, dict]:
        """Ask `source` for its state (a request of our round `round_`) and wait for it (at most WAIT_S); take it.
        Returns the answer's `optimizer` message (its meta `at` is the source's round; None if no answer came) and
        what happened, for the rejoin event: taken, with the optimizer state or not, how long it took."""
        asked = sent = time.monotonic()
        self.transport.send(source, messages.REJOIN, round_)
        while ((msg := self.transport.mailbox.latest(messages.MODEL, source)) is None or msg.round != round_
               or (state := self.transport.mailbox.latest(messages.OPTIMIZER, source)) is None
               or state.round != round_):
            now = time.monotonic()
            if now - asked > WAIT_S:
                return None, {"taken": False, "wait_s": round(now - asked, 3)}
            if now - sent >= REQUEST_EVERY_S:
                self.transport.send(source, messages.REJOIN, round_)
                sent = now
            self._answer(round_)  # were two peers to ask each other, neither waits in vain
            time.sleep(_POLL_S)
        waited = round(time.monotonic() - asked, 3)
        own = self.trainer.get_params()
        if getattr(msg.tensors["x"], "shape", None) != own.shape:
            self.transport.reject(msg, "shape", f"expected parameters of shape {own.shape}")
            return None, {"taken": False, "wait_s": waited}
        self.trainer.set_params(msg.tensors["x"])
        with_optimizer = len(state.tensors["o"]) > 0  # empty: the source's state was too large to send
        if with_optimizer:
            try:
                self.trainer.set_optimizer_vector(state.tensors["o"])
            except ValueError as e:
                self.transport.reject(state, "shape", str(e))
                with_optimizer = False
        return state, {"taken": True, "optimizer": with_optimizer, "wait_s": waited}

    def _answer(self, iteration: int) -> None:
        """Send a peer that asks our optimizer state with our round, then our parameters, both for its request's
        round; once per round asked for: the repeats of a request are for a lost request, and answering each of them
        would queue whole models behind each other on a slow link (the state is left empty if it is larger than a
        message may be)."""
        for p in self.ctx.others:  # a peer asking is not waited for (departed) until it takes part in rounds again
            msg = self.transport.mailbox.latest(messages.REJOIN, p)
            if msg is not None and self._answered.get(p) != msg.round:
                self._answered[p] = msg.round
                state, meta = self.trainer.optimizer_vector(), {"at": iteration, "train_s": self.elapsed()}
                try:
                    self.transport.send(p, messages.OPTIMIZER, msg.round, {"o": state}, meta)
                except ValueError:
                    self.transport.send(p, messages.OPTIMIZER, msg.round, {"o": state[:0]}, meta)
                self.transport.send(p, messages.MODEL, msg.round, {"x": self.trainer.get_params()})
