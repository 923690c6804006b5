"""Rejoining: a peer that fell far behind the others finds them again and continues from their state.

A peer falls behind when it was restarted while the others trained (its round starts from its checkpoint, or 0) or
when its host froze and woke up. Either way it asks the peer furthest ahead for its parameters and optimizer state
(a `rejoin` message, repeated until answered) and waits for them; its hellos and requests do not make the others wait
for it meanwhile. Then it tells every peer it is back from a round a little past the newest it knows of (`back`):
that re-admits it, the others send it every round they start from then on, and they do not wait for it in the
rounds before; one already past that round answers with its own next round, before which the rejoining peer does
not wait for it either. A peer also says hello, once in a while, to peers that departed without a bye: if they are
still there, their answer tells how far they got. Every peer answers rejoin requests. A peer whose own loop stood
still for longer than the others give a silent peer (`frozen_after_s`: a frozen or suspended host) was given up by
them, and they went on: for a while after it wakes it catches up as soon as they are more than LEAD rounds ahead (the
rounds a rejoining peer comes back past), instead of the training margin; going on from where it froze, a few rounds
behind, would make them wait for it round after round, as far behind as it stays.

Which state: it also asks every live peer what replica of its own state it holds (`dlion.replica`), and takes the
freshest of what it has (its own checkpoint, if it restarted from one; a frozen peer's own state), its replica and
the source's state: the replica if it is newer than what it has and as recent as the source's state, else the
source's. A peer whose own state is within the margin of the others does not ask at all. Where the peers' models
never mix again (`resync`: lockstep rounds and no gossip, as in BSP, where every peer applies the same combined
gradient each round), a state from before the round it comes back at would leave its model behind theirs for good,
by the rounds it missed: there it asks the source once more for the state of that very round, which the source sends
as it starts the round (a request for a round is answered once the answerer has reached it), and the peers go on
from the same parameters. The push-sum weight of a
replica newer than what it has is taken in any case (`take_weight`): it is this peer's own share of the total, which
its death took out of the system.
"""
from __future__ import annotations

import math
import time

import numpy as np

from dlion import messages
from dlion.compression import rounded
from dlion.transport.wire import BFLOAT16

WAIT_S = 10.0           # how long a rejoining peer waits for the state it asked for
LEAD = 2                # it enters at least this many rounds past the newest it knows of: rounds the others start
                        # after its `back` reached them
BACK_MARGIN_S = 0.2     # and as many more as the others make, at their pace, in the time it took, and this long
REQUEST_EVERY_S = 1.0   # how often it repeats the request meanwhile (one may be lost behind a full queue)
ANSWER_AGAIN_S = 3.0    # a repeat of a request answered this long ago is answered again: the answer was lost (the
                        # queue to a peer woken from a freeze can still be full of the rounds sent before it froze)
WOKEN_S = 5.0           # for how long after waking from a freeze a peer catches up at LEAD rounds behind
REPLICA_GRACE_S = 0.2   # once the source answered, how much longer it waits for offers of its own replica (the
                        # others go on meanwhile: a longer wait left a fast run's peer behind by more than the lead)
KNOCK_EVERY_S = 1.0     # how often a peer says hello to peers that departed without a bye
RETRY_AFTER_S = 30.0    # after a request nobody answered, how long before a peer tries to catch up again
_POLL_S = 0.01


class Rejoin:
    """One peer's side of rejoining, run from its loop."""

    def __init__(self, ctx, trainer, log, margin: int, catch_up: bool = True, elapsed=lambda: 0.0, replicas=None,
                 take_weight=lambda weight: None, resync: bool = False, frozen_after_s: float | None = None):
        """`margin`: rounds a peer may lag (the evaluation interval, or the stages' staleness bound if larger); one
        behind by more than that at start (twice that while training, where a slow peer may lag a little) rejoins.
        `catch_up` False: it never does (a peer that trains alone has nobody's state to take); it still answers.
        `elapsed()`: this peer's training time so far, sent with its state, so that a peer restarted from it goes on
        with the others' clock (its time budget, its curves) instead of starting its own from zero.
        `replicas` (`dlion.replica.Replicas`): where this peer's replicas are asked for; `take_weight(w)` gives the
        gossip the push-sum weight of the replica taken. `resync`: take the source's state of the round it comes back
        at too (the module's docstring). `frozen_after_s`: a pause of its own loop that long counts as a freeze (the
        transport's heartbeat timeout; None: never)."""
        self.ctx, self.trainer, self.log = ctx, trainer, log
        self.replicas, self.take_weight = replicas, take_weight
        self.elapsed = elapsed
        self.train_s: float | None = None  # the training time of the state taken at the latest rejoin
        self.transport = ctx.transport
        self.margin = margin
        self.catch_up = catch_up
        self.resync = resync
        self.frozen_after_s = frozen_after_s
        self._stepped_at: float | None = None  # when the loop last came by (time.monotonic())
        self._woken_until = 0.0  # catching up at LEAD rounds behind until then, after a freeze
        self._answered: dict[int, tuple[int, float]] = {}  # peer -> its last rejoin request answered: round, when
        self._requests_seen = 0  # rejoin requests filed when this peer last looked at them
        self._requests_ahead = False  # one of them is for a round this peer has not reached yet
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
        self.answer(iteration)
        now = time.monotonic()
        if (self.frozen_after_s is not None and self._stepped_at is not None
                and now - self._stepped_at > self.frozen_after_s):
            self._woken_until = now + WOKEN_S
        self._stepped_at = now
        return self._catch_up(iteration, LEAD if now < self._woken_until else 2 * self.margin)

    def _catch_up(self, iteration: int, margin: int) -> int:
        """Only the source's answer moves the peer (its round is in the answer): what made it ask (a hello, a
        message beyond the window) may be stale, or forged where links are not authenticated."""
        if not self.catch_up:
            return iteration
        ahead, source = self._furthest_ahead()
        if ahead <= iteration + margin or time.monotonic() < self._retry_at:
            return iteration
        state, taken = self._fetch(source, iteration, ahead)
        if not taken["taken"]:
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            self.log.emit("rejoin", at=iteration, was_at=iteration, asked=source, **taken)
            return iteration
        # the round to be back at: past the source's answer, or, had it none (the state is a replica's), past where
        # the others were last seen
        seen = self.transport.mailbox.newest_rounds().values()
        newest = max(state.meta["at"], *seen) if state is not None else max(taken["from_round"], ahead, *seen)
        at = max(iteration, newest + (self._lead(source, state) if state is not None else LEAD))
        self.transport.mailbox.advance(at)
        left = self.transport.mailbox.left()
        self.transport.back([p for p in self.ctx.others if p not in left], at)
        clock = state  # the answer whose training time this peer goes on from
        if self.resync and state is not None:
            synced = self._state_of_round(source, at)
            taken["resync"] = synced is not None
            clock = synced or state
        if clock is not None:  # the others' clocks ran on while the answer came and was taken
            self.train_s = clock.meta["train_s"] + max(0.0, time.time() - clock.received_at)
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

    def _fetch(self, source: int, round_: int, ahead: int) -> tuple[object, dict]:
        """Ask `source` for its state and every live peer what replica of this peer's state it holds (requests of
        our round `round_`), wait for the answers (at most WAIT_S; once the source's is in, at most REPLICA_GRACE_S
        more for offers), and take the freshest state: the best offered replica, fetched, if it is as recent as the
        source's state, else the source's. Returns the source's answer (its `optimizer` message: meta `at` is its
        round; None if it did not answer) and what happened, for the rejoin event: taken or not, from whom, the round
        of the state taken, with the optimizer state or not, the replica's weight, how long it took. An offer is
        believed only if it is plausible: no newer than the round the others are known at (`ahead`, or the source's
        answer), a weight no larger than the number of peers (a weight is a share of that total)."""
        asked = sent = time.monotonic()
        self.transport.send(source, messages.REJOIN, round_)
        holders = self.replicas.ask(round_) if self.replicas is not None else []
        answered_at = model = state = None
        while True:
            if answered_at is None:
                model, state = self._source_answer(source, round_)
                if state is not None:
                    answered_at = time.monotonic()
            offers = self._answers(messages.REPLICA_OFFER, holders, round_)
            now = time.monotonic()
            if (answered_at is not None and (len(offers) == len(holders) or now - answered_at > REPLICA_GRACE_S)) \
                    or now - asked > WAIT_S:
                break
            if answered_at is None and now - sent >= REQUEST_EVERY_S:
                self.transport.send(source, messages.REJOIN, round_)
                sent = now
            self._wait(round_)
        taken = {}
        # a replica older than the state this peer has (a frozen peer's own, in memory) is of no use, nor its weight
        newest = max(ahead, state.meta["at"] if state is not None else 0)
        plausible = [o for o in offers.values()
                     if round_ < o.meta["at"] <= newest and o.meta["w"] <= len(self.ctx.peer_ids)]
        offer = max(plausible, key=lambda o: o.meta["at"], default=None)
        if offer is not None:
            self.take_weight(offer.meta["w"])  # its own weight, whichever parameters it goes on from
            taken["weight"] = offer.meta["w"]
        if offer is not None and (state is None or offer.meta["at"] >= state.meta["at"]):
            replica = self._replica(offer.sender, round_)
            if replica is not None:
                got = self._take(replica, replica.tensors["p"], replica.tensors["o"])
                if got["taken"] or state is None:
                    return state, {**got, **taken, "wait_s": round(time.monotonic() - asked, 3)}
        if state is not None:
            got = self._take(state, model.tensors["x"], state.tensors["o"])
            return state, {**got, **taken, "wait_s": round(time.monotonic() - asked, 3)}
        return None, {"taken": False, **taken, "wait_s": round(time.monotonic() - asked, 3)}

    def _state_of_round(self, source: int, round_: int):
        """Ask `source` for its state as it starts round `round_` and take it (at most WAIT_S); its answer (the
        `optimizer` message), None if none came or it could not be taken."""
        asked = sent = time.monotonic()
        self.transport.send(source, messages.REJOIN, round_)
        while time.monotonic() - asked <= WAIT_S:
            model, state = self._source_answer(source, round_)
            if state is not None:
                return state if self._take(state, model.tensors["x"], state.tensors["o"])["taken"] else None
            if time.monotonic() - sent >= REQUEST_EVERY_S:
                self.transport.send(source, messages.REJOIN, round_)
                sent = time.monotonic()
            time.sleep(_POLL_S)
        return None

    def _source_answer(self, source: int, round_: int) -> tuple:
        """`source`'s answer to our request of round `round_`: its `model` and `optimizer` messages, (None, None)
        until both are in."""
        model, state = (self.transport.mailbox.latest(kind, source) for kind in (messages.MODEL, messages.OPTIMIZER))
        if model is not None and state is not None and model.round == state.round == round_:
            return model, state
        return None, None

    def _answers(self, kind: str, peers, round_: int) -> dict:
        """The latest message of `kind` from each of `peers` that answers our request of round `round_`."""
        return {p: msg for p in peers
                if (msg := self.transport.mailbox.latest(kind, p)) is not None and msg.round == round_}

    def _replica(self, holder: int, round_: int):
        """Ask `holder` for the replica it offered and wait for it (at most WAIT_S); None if it did not come."""
        self.replicas.fetch(holder, round_)
        asked = time.monotonic()
        while not (got := self._answers(messages.REPLICA_STATE, [holder], round_)):
            if time.monotonic() - asked > WAIT_S:
                return None
            self._wait(round_)
        return got[holder]

    def _wait(self, round_: int) -> None:
        """A poll's pause, answering others meanwhile: were two peers to ask each other, neither waits in vain."""
        self.answer(round_)
        time.sleep(_POLL_S)

    def _take(self, msg, params, optimizer) -> dict:
        """Continue from `params` and, if it fits, `optimizer` (empty: the sender's was too large to send)."""
        own = self.trainer.get_params()
        if getattr(params, "shape", None) != own.shape:
            self.transport.reject(msg, "shape", f"expected parameters of shape {own.shape}")
            return {"taken": False}
        self.trainer.set_params(params)
        with_optimizer = len(optimizer) > 0
        if with_optimizer:
            try:
                self.trainer.set_optimizer_vector(self._exact_scalars(optimizer, msg.tensors.get("n")))
            except ValueError as e:
                self.transport.reject(msg, "shape", str(e))
                with_optimizer = False
        return {"taken": True, "from": "replica" if msg.kind == messages.REPLICA_STATE else "source",
                "from_peer": msg.sender, "from_round": msg.meta["at"], "optimizer": with_optimizer}

    def _exact_scalars(self, optimizer: np.ndarray, scalars) -> np.ndarray:
        """`optimizer` with the optimizer's scalars (`Trainer.optimizer_scalars`) as sent exactly, if they were."""
        if scalars is None:
            return optimizer
        at = self.trainer.optimizer_scalars()
        if scalars.shape != at.shape or at.size and at[-1] >= optimizer.size:
            raise ValueError(f"{scalars.size} optimizer scalars do not fit this model and optimizer")
        optimizer = np.array(optimizer, np.float32)
        optimizer[at] = scalars
        return optimizer

    def answer_within(self, iteration: int) -> None:
        """Between two local steps of round `iteration`: answer with the state as it is, so that a peer asking does
        not wait out the rest of the round (on a small peer, seconds it cannot train in) for a state no better; not
        where the peers must go on from the very same parameters (`resync`), which are those a round starts with."""
        if not self.resync:
            self.answer(iteration)

    def answer(self, iteration: int) -> None:
        """Send a peer that asks our optimizer state with our round, then our parameters, both for its request's
        round, once we have reached that round (a request for a round still ahead is for the state we start it with);
        once per round asked for, unless a repeat comes ANSWER_AGAIN_S after the answer: the repeats of a request are
        for a lost request, and answering each of them would queue whole models behind each other on a slow link
        (the state is left empty if it is larger than a message
        may be). The state goes in half the bytes, a slow link's seconds in a restarted peer's way: the optimizer's
        moments in bfloat16 (float32's range, a relative rounding of 2^-9: statistics that need no more, and second
        moments too small for float16), its scalars (step count, learning rate) exactly, the parameters in float16
        where they fit, except where the peers must go on from the same parameters (`resync`)."""
        filed = self.transport.mailbox.filed(messages.REJOIN)
        if filed == self._requests_seen and not self._requests_ahead:
            return  # nothing new, nothing waiting for a round still ahead
        self._requests_seen, self._requests_ahead = filed, False
        for p in self.ctx.others:  # a peer asking is not waited for (departed) until it takes part in rounds again
            msg = self.transport.mailbox.latest(messages.REJOIN, p)
            last_round, answered_at = self._answered.get(p, (None, 0.0))
            if msg is None or (last_round == msg.round and time.monotonic() - answered_at < ANSWER_AGAIN_S):
                continue
            if msg.round > iteration:
                self._requests_ahead = True
                continue
            self._answered[p] = (msg.round, time.monotonic())
            state = self.trainer.optimizer_vector()
            encoded = {"o": state.astype(BFLOAT16), "n": state[self.trainer.optimizer_scalars()]}
            meta = {"at": iteration, "train_s": self.elapsed()}
            try:
                self.transport.send(p, messages.OPTIMIZER, msg.round, encoded, meta)
            except ValueError:
                self.transport.send(p, messages.OPTIMIZER, msg.round, {"o": state[:0]}, meta)
            self.transport.send(p, messages.MODEL, msg.round,
                                {"x": rounded(self.trainer.get_params(), half=not self.resync)})
