"""Rejoining: a peer that fell far behind the others finds them again and continues from their state.

A peer falls behind when it was restarted while the others trained (its round starts from its checkpoint, or 0) or
when its host froze and woke up. Either way it asks the peer furthest ahead for its parameters and optimizer state
(a `rejoin` message, repeated until answered) and waits for them; its hellos and requests do not make the others wait
for it meanwhile. Then it tells every peer it is back from a round a little past the newest it knows of (`back`):
that re-admits it, the others send it every round they start from then on, and they do not wait for it in the
rounds before; one already past that round answers with its own next round, before which the rejoining peer does
not wait for it either. A peer also says hello, once in a while, to peers that departed without a bye: if they are still
there, their answer re-admits them and tells how far they got. Every peer answers rejoin requests.
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
_POLL_S = 0.01


class Rejoin:
    """One peer's side of rejoining, run from its loop."""

    def __init__(self, ctx, trainer, log, every_iterations: int):
        """`every_iterations`: the evaluation interval; a peer behind by more than that at start (twice that while
        training, where a slow peer may lag a little) rejoins."""
        self.ctx, self.trainer, self.log = ctx, trainer, log
        self.transport = ctx.transport
        self.every = every_iterations
        self._answered: dict[int, object] = {}  # peer -> the last rejoin request of its answered
        self._next_knock = 0.0
        self.at: int | None = None  # the round of the latest rejoin

    def start(self, iteration: int) -> int:
        """The round to start training from (after the hello barrier)."""
        return self._catch_up(iteration, self.every)

    def step(self, iteration: int) -> int:
        """Once per iteration: knock, answer requests, catch up. Returns the round to go on from."""
        self._knock()
        self._answer(iteration)
        return self._catch_up(iteration, 2 * self.every)

    def _catch_up(self, iteration: int, margin: int) -> int:
        ahead, source = self._furthest_ahead()
        if ahead <= iteration + margin:
            return iteration
        self.transport.mailbox.advance(ahead)
        answer, taken = self._fetch(source, ahead, iteration)
        newest = max([answer.round if answer is not None else ahead, *self.transport.mailbox.newest_rounds().values()])
        at = newest + self._lead(source, answer)
        self.transport.mailbox.advance(at)
        left = self.transport.mailbox.left()
        self.transport.back([p for p in self.ctx.others if p not in left], at)
        self.log.emit("rejoin", at=at, was_at=iteration, asked=source, **taken)
        self.at = at
        return at

    def _furthest_ahead(self) -> tuple[int, int | None]:
        """The highest round a peer that did not leave is known to be at (its latest hello says so, or it sent a
        message of that round, even one beyond our window), and that peer. Departed peers count: a woken peer's own
        heartbeats may have given up on the others, whose answers to its knocks tell where they are."""
        seen = self.transport.mailbox.newest_rounds()
        left = self.transport.mailbox.left()
        best = (0, None)
        for p in self.ctx.others:
            if p in left:
                continue
            hello = self.transport.mailbox.latest(messages.HELLO, p)
            at = max(seen.get(p, 0), hello.meta["at"] if hello is not None else 0)
            if at > best[0]:
                best = (at, p)
        return best

    def _knock(self) -> None:
        if (silent := self.transport.mailbox.departed_silently()) and time.monotonic() >= self._next_knock:
            self.transport.knock(silent)
            self._next_knock = time.monotonic() + KNOCK_EVERY_S

    def _lead(self, source: int, answer) -> int:
        """How many rounds past the newest it knows of a rejoining peer comes back at: LEAD, plus the rounds the
        source makes, at the pace its hello and its answer show, since the answer and for BACK_MARGIN_S more (the
        `back` must reach the others before they start that round), at most an evaluation period more."""
        hello = self.transport.mailbox.latest(messages.HELLO, source)
        if answer is None or hello is None or answer.received_at <= hello.received_at:
            return LEAD
        rate = max(0.0, (answer.round - hello.meta["at"]) / (answer.received_at - hello.received_at))
        return LEAD + min(self.every, math.ceil(rate * (time.time() - answer.received_at + BACK_MARGIN_S)))

    def _fetch(self, source: int, round_: int, iteration: int) -> tuple[object, dict]:
        """Ask `source` for its state and wait for it (at most WAIT_S); take it. Returns the answer (its round is
        the source's when it answered; None if none came) and what happened, for the rejoin event: taken, with the
        optimizer state or not, how long it took."""
        asked = sent = time.monotonic()
        self.transport.send(source, messages.REJOIN, round_)
        while (msg := self.transport.mailbox.latest(messages.MODEL, source)) is None or msg.round < round_:
            now = time.monotonic()
            if now - asked > WAIT_S:
                return None, {"taken": False, "wait_s": round(now - asked, 3)}
            if now - sent >= REQUEST_EVERY_S:
                self.transport.send(source, messages.REJOIN, round_)
                sent = now
            self._answer(iteration)  # were two peers to ask each other, neither waits in vain
            time.sleep(_POLL_S)
        waited = round(time.monotonic() - asked, 3)
        own = self.trainer.get_params()
        if getattr(msg.tensors["x"], "shape", None) != own.shape:
            self.transport.reject(msg, "shape", f"expected parameters of shape {own.shape}")
            return None, {"taken": False, "wait_s": waited}
        self.trainer.set_params(msg.tensors["x"])
        # sent just before the model on the same link, so here by now if it was sent at all
        state = self.transport.mailbox.latest(messages.OPTIMIZER, source)
        with_optimizer = state is not None and state.round == msg.round
        if with_optimizer:
            try:
                self.trainer.set_optimizer_vector(state.tensors["o"])
            except ValueError as e:
                self.transport.reject(state, "shape", str(e))
                with_optimizer = False
        return msg, {"taken": True, "optimizer": with_optimizer, "wait_s": waited}

    def _answer(self, iteration: int) -> None:
        """Send a peer that asks our optimizer state, then our parameters, at our round (each request once; the
        state is left out if it is larger than a message may be)."""
        for p in self.ctx.others:  # a peer asking is not waited for (departed) until it takes part in rounds again
            msg = self.transport.mailbox.latest(messages.REJOIN, p)
            if msg is not None and self._answered.get(p) is not msg:
                self._answered[p] = msg
                at = max(msg.round, iteration)
                try:
                    self.transport.send(p, messages.OPTIMIZER, at, {"o": self.trainer.optimizer_vector()})
                except ValueError:
                    pass
                self.transport.send(p, messages.MODEL, at, {"x": self.trainer.get_params()})
