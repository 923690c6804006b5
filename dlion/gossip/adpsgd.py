"""AD-PSGD (Lian et al. 2018, "Asynchronous Decentralized Parallel Stochastic Gradient Descent", ICML), a baseline of
the field: after each local step a peer averages its model with ONE neighbour drawn at random, and nobody waits.

The paper's step is an atomic pairwise average, x_i, x_j <- (x_i + x_j) / 2 (a doubly stochastic mixing: the peers'
mean model is untouched by it). Over messages, without locks, one round t of `step(t, params)` does:

1. Replies: a reply to this peer's outstanding request (from its target, numbered by the request's round) carries
   the target's model b as it was before the target averaged; the peer adds `mixing` * (b - a), a being the model it
   sent. So both ends move by opposite amounts and the mean is conserved exactly, even when either one trained or
   served others meanwhile (with nothing in between, both land on the same average: the paper's step).
2. Its request is forgotten when its target departed (after that target's last reply was folded in: a `bye` is the
   last message on a link) or when it has waited `timeout_s`: a new one may go. A reply that comes after that, or
   that answers no request of ours, is rejected (the target averaged alone: the mean moves by that one step).
3. Requests: for each request a (in round order per sender), the peer replies with its model b and then takes
   b + `mixing` * (a - b). A request from the peer this one's own request went to (the two crossed) answers that
   request instead: the peer adds `mixing` * (a - its own request's model) and sends no reply, and so does the other
   peer with ours (a request is in flight until answered, so both see the crossing), so neither waits. A request from
   a peer that has departed is not served (nobody would take the reply: the survivors' mean would move).
4. Request: if none is outstanding, the peer sends its model to one live peer it may talk to (the topology's
   destinations over its period; on the full mesh, any other), drawn uniformly by a generator seeded with (`seed`,
   peer id).

Nothing ever waits: whatever has arrived is used, the rest next round. Requests are numbered by the requester's own
rounds, and peers run at their own speeds, so requests are filed whatever their round (`messages.UNWINDOWED`) and
taken with `mailbox.drain`. Requests are drained before replies, and replies handled first: a peer's reply was filed
before any request it sent after it (a link keeps order), so a request sent after its sender replied to ours is
never taken for a crossing (the reply is in hand, and has answered ours, by then). A request or reply with a wrong shape or dtype is rejected
(`transport.reject`); non-finite ones never get here (the transport drops them), too large ones neither (the norm
guard judges every kind that carries parameters against this peer's own).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlion import messages
from dlion.schema import non_negative, option, positive
from dlion.stages import GossipResult, ModelAccess, StageContext, Strategy

REQUEST, REPLY = messages.AVERAGE_REQUEST, messages.AVERAGE_REPLY


@dataclass(frozen=True)
class _Request:
    """This peer's request in flight: to whom, its round (its reply's), when it left, and the model it carried."""

    target: int
    round: int
    sent_at: float
    model: np.ndarray


class AdPsgd(Strategy):
    """AD-PSGD: each round, an asynchronous pairwise average with one neighbour drawn at random; nobody waits.

    Requests and replies are folded in whenever they arrive (the rules: dlion/gossip/adpsgd.py)."""

    @dataclass(frozen=True)
    class Params:
        mixing: float = option(0.5, check=lambda x: 0 < x < 1,
                               expect="a number in (0, 1): the share of the partner's model in a pairwise average "
                                      "(1/2: AD-PSGD's)")
        timeout_s: float = option(10.0, check=positive,
                                  expect="a positive number of seconds a request may wait for its reply before it "
                                         "is forgotten and a new one may go")
        seed: int = option(0, check=non_negative,
                           expect="a non-negative integer: with the peer's id, seeds its draws of partners")

    def __init__(self, params: Params, ctx: StageContext):
        self.params = params
        self.ctx = ctx
        self.transport = ctx.transport
        self.candidates = tuple(ctx.topology.destinations(ctx.peer_id))
        self.rng = np.random.default_rng([params.seed, ctx.peer_id])
        self.outstanding: _Request | None = None
        self.forgotten = 0  # requests given up (timed out, or their target departed), so far
        self._guarded = False

    def mix(self, round_: int, model: ModelAccess) -> GossipResult:
        result = self.step(round_, model.get())
        if result.received:
            model.set(result.params)
        return result

    def take_weight(self, weight: float) -> None:
        pass  # pairwise averages keep no weights

    def step(self, round_: int, params: np.ndarray) -> GossipResult:
        """One round (module docstring): replies and requests that have arrived folded in, maybe a new request sent;
        returns the parameters to continue from."""
        x = params.astype(np.float32)  # a copy: the caller's array is left alone
        if not self._guarded:  # what received models are judged by until this peer has sent one
            self.transport.guard.observe(REQUEST, {"x": x})
            self._guarded = True
        requests = self.transport.mailbox.drain(REQUEST, round_)
        replies = self.transport.mailbox.drain(REPLY, round_)
        received = sum(self._fold_reply(x, msg) for sender in sorted(replies) for msg in replies[sender])
        self._forget_stale()
        sent = {}
        for sender in sorted(requests):
            for msg in requests[sender]:
                received += self._serve(x, msg, round_, sent)
        if self.outstanding is None:
            self._request(x, round_, sent)
        return GossipResult(1.0, received, 0.0, sent, x)

    def _fold_reply(self, x: np.ndarray, msg) -> int:
        """Add the reply's share to x (in place); 1 if used, 0 if rejected."""
        mine = self.outstanding
        if mine is None or (msg.sender, msg.round) != (mine.target, mine.round):
            self.transport.reject(msg, "unexpected reply", "it answers no request of ours in flight (forgotten after "
                                                           "the timeout, answered by a crossing, or never sent)")
            return 0
        if self._rejected(msg, x):
            return 0
        self._move(x, msg.tensors["x"], mine.model)
        self.outstanding = None
        return 1

    def _forget_stale(self) -> None:
        mine = self.outstanding
        if mine is not None and (mine.target in self.transport.mailbox.departed
                                 or self.ctx.clock() - mine.sent_at > self.params.timeout_s):
            self.outstanding = None
            self.forgotten += 1

    def _serve(self, x: np.ndarray, msg, round_: int, sent: dict) -> int:
        """Answer one request, or take it as the answer to ours if the two crossed; x is updated in place. 1 if the
        request's model was folded in, 0 if it was rejected."""
        if msg.sender in self.transport.mailbox.departed:
            self.transport.reject(msg, "departed", "its sender has left: nobody would take the reply")
            return 0
        if self._rejected(msg, x):
            return 0
        theirs = msg.tensors["x"]
        mine = self.outstanding
        if mine is not None and mine.target == msg.sender:  # crossed: each request answers the other
            self._move(x, theirs, mine.model)
            self.outstanding = None
            return 1
        before = x.copy()  # the reply may alias what it sends until it leaves
        self.transport.send(msg.sender, REPLY, msg.round, {"x": before})
        sent[msg.sender] = sent.get(msg.sender, 0) + before.size
        self._move(x, theirs, before)
        return 1

    def _move(self, x: np.ndarray, partner: np.ndarray, base: np.ndarray) -> None:
        """x += mixing * (partner - base): this end's half of a pairwise average of `base` (this peer's model as
        the partner saw it) with `partner`, the partner's as this end sees it; the partner moves by the opposite."""
        x += np.float32(self.params.mixing) * (partner - base)

    def _request(self, x: np.ndarray, round_: int, sent: dict) -> None:
        live = self.ctx.live(self.candidates)
        if not live:
            return
        target = live[int(self.rng.integers(len(live)))]
        model = x.copy()
        self.transport.send(target, REQUEST, round_, {"x": model})
        sent[target] = sent.get(target, 0) + model.size
        self.outstanding = _Request(target, round_, self.ctx.clock(), model)

    def _rejected(self, msg, x: np.ndarray) -> bool:
        """Reject (and count) a message whose model is not a dense float32 vector of this peer's size."""
        theirs = msg.tensors["x"]
        if isinstance(theirs, np.ndarray) and theirs.shape == x.shape and theirs.dtype == np.float32:
            return False
        self.transport.reject(msg, "shape", f"expected a dense float32 'x' of {x.size} entries")
        return True
