"""Push-sum gossip of the model (stochastic gradient push, SGP) on directed, time-varying graphs: the dense reference,
and the engine Sparse-Push shares.

Each peer keeps a numerator x (float64) and a weight w (1 at the start), and trains the de-biased model z = x / w.
One round t, `step(t, params)`:

1. Local update: x += params - z_last, i.e. whatever changed the parameters since the last step (the optimizer's
   step on z, unscaled, as in SGP), plus the flow-integral skew compensation's correction when it is on
   (`skew.py`; the other compensation, logit adjustment, is in the trainer's loss and needs nothing here).
2. Push: with the live out-neighbours O of round t (the topology's, minus peers that said goodbye) and the push-sum
   share a = 1/(|O| + 1), the peer gives each out-neighbour the weight dw = gamma * a * w with numerator mass
   dw * z, and keeps the rest. Dense push-sum (gamma = 1) sends z itself (float32), so each out-neighbour gets
   a * x: exactly SGP's column-stochastic mixing. Sparse-Push sends less and owes the rest (`sparse_push.py`).
   A departed out-neighbour's share simply stays with the sender (departed: it said bye, or its connection dropped,
   as a killed process's does; pushing on into a dead peer would drain the sender's weight towards zero).
3. Receive: it collects every message sent to it for this round or an earlier one that it has not used yet, in
   round order per sender, and adds each one's weight and numerator mass. It waits (at most `deadline_s`; the
   mailbox stops waiting for departed and suspected peers) only for an in-neighbour of round t - `staleness` that has
   sent nothing for that round or later: with staleness 0 for this round's messages (lockstep); with more, the
   round's messages are in flight while the next gradient is computed, and are folded in when they have arrived.
4. It returns z = x / w (float32), the parameters to train on next.

Missed rounds and lost messages: weight is restored, not lost. Every message carries a sequence number "n" and the
running sum "w" of the weight pushed on its link so far; the receiver adds the growth of that sum since the last
message it used on the link, valued at the model the message carries. So:
- A receiver that skips rounds (calls `step` for a later round), or that receives a round's message after its own
  round passed, folds it in with the next round's: the mailbox keeps what was not collected. Exact, nothing lost,
  as every message is used once and in order.
- A sender that skips a round sends nothing and keeps its share: nothing in flight, nothing lost.
- A message the receiver cannot use (lost, rejected) leaves its weight in the running sum;
  the link's next delivered message carries it, so the total weight is restored exactly at that delivery, and the
  numerator with it at the sender's newer model (off by the missed weight times how far that model moved meanwhile:
  nothing once the models agree). Until then the weight is in flight: sum(w) + in flight = number of peers, always.
- Only a departed peer takes mass out of the system (its own and what was in flight to it); push-sum's ratio keeps
  every survivor's z a convex combination, and they converge to the average of what remains.

Messages are `gossip` messages: tensor "x" (float32: dense, or `wire.Sparse` for Sparse-Push, with "owed") and meta
n, w. A message with a wrong size or dtype, non-finite values, a weight sum that did not grow plausibly, or a
sequence number that did not advance is dropped with `transport.reject`. A message with n = 1 (always dense) starts
the link afresh: the first message of a link, or of a restarted sender.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from dlion import messages
from dlion.gossip.skew import SkewCompensation
from dlion.schema import option, positive
from dlion.stages import GossipResult, ModelAccess, Requirements, StageContext, Strategy
from dlion.transport.wire import Sparse

KIND = messages.GOSSIP
SKEW_COMPENSATIONS = ("none", "logit-adjustment", "flow-integral")


class NoGossip(Strategy):
    """No model-plane gossip (the baseline): the parameters are left as they are."""

    def __init__(self, params: Strategy.Params, ctx: StageContext):
        pass

    def mix(self, round_: int, model: ModelAccess) -> GossipResult:
        return GossipResult(1.0, 0, 0.0)


@dataclass
class _Link:
    """One directed link's state, alike at both ends: messages so far, the running sum of the weight pushed, and
    (Sparse-Push) the public copy of the sender's model; the sender also keeps the link's debt."""

    seq: int = 0
    weight: float = 0.0
    copy: np.ndarray | None = None
    debt: np.ndarray | float = 0.0  # numerator mass owed on the link, not sent yet (Sparse-Push)


class PushSum(Strategy):
    """Dense push-sum (SGP): each round, split x and w equally among self and the round's out-neighbours."""

    gamma = 1.0  # share of the push-sum mixing applied each round: dense push-sum moves all of it

    @dataclass(frozen=True)
    class Params:
        deadline_s: float = option(5.0, check=positive, expect="a positive number of seconds to wait for the "
                                                                 "round's in-neighbours")
        staleness: int = option(0, check=lambda x: x >= 0,
                                expect="a non-negative integer: gossip rounds an in-neighbour may lag before the peer "
                                       "waits for it (0: lockstep)")
        every: int = option(1, check=positive, expect="a positive integer: training rounds per gossip round")
        skew_compensation: Literal[SKEW_COMPENSATIONS] = option(
            "none", expect="one of: none; logit-adjustment (each peer trains with its logits shifted by the log of its "
                           "label frequencies: dlion/trainer.py); flow-integral (integral feedback on the gossip "
                           "flow: dlion/gossip/skew.py)")
        skew_gain: float = option(0.05, check=lambda x: 0 < x <= 1,
                                  expect="a number in (0, 1]: share of the flow integral added each round "
                                         "(flow-integral)")
        skew_leak: float = option(0.005, check=lambda x: 0 < x <= 1,
                                  expect="a number in (0, 1]: how fast the flow integral forgets, per round "
                                         "(flow-integral)")

    @classmethod
    def requires(cls, params: Params) -> Requirements:
        return Requirements(label_prior=params.skew_compensation == "logit-adjustment")

    def __init__(self, params: Params, ctx: StageContext):
        self.params = params
        self.ctx = ctx
        self.peer_id = ctx.peer_id
        self.transport = ctx.transport
        self.topology = ctx.topology
        self.x: np.ndarray | None = None
        self.w = 1.0
        self.z: np.ndarray | None = None
        self.last_round = -1
        self.skew: SkewCompensation | None = None
        self._out: dict[int, _Link] = {}
        self._in: dict[int, _Link] = {}

    def mix(self, round_: int, model: ModelAccess) -> GossipResult:
        """Every `every`-th training round, one gossip round on the model's parameters (`step`, numbered in gossip
        rounds: the graph and the staleness bound count those), and the model continues from the de-biased result;
        the rounds between leave the model alone (their updates reach x at the next gossip round)."""
        if round_ % self.params.every:
            return GossipResult(self.w, 0, 0.0)
        result = self.step(round_ // self.params.every, model.get())
        model.set(result.params)
        return result

    def step(self, round_: int, params: np.ndarray) -> GossipResult:
        """One round: local update into x, push, receive until the deadline; returns z = x / w."""
        if round_ <= self.last_round:
            raise ValueError(f"gossip rounds must increase: {round_} after {self.last_round}")
        if self.x is None:
            self.x = params.astype(np.float64)
            if self.params.skew_compensation == "flow-integral":
                self.skew = SkewCompensation(params.size, self.params.skew_gain, self.params.skew_leak)
        else:
            self.x += params
            self.x -= self.z
        if self.skew is not None:
            self.x += self.skew.correction()
        before_gossip = None if self.skew is None else self.x.copy()
        sent = self._push(round_)
        lag = self.params.staleness
        expected = self.topology.in_neighbours(self.peer_id, max(0, round_ - lag))
        start = self.ctx.clock()
        got = self.transport.mailbox.collect(KIND, round_, expected, start + self.params.deadline_s, lag)
        wait_s = self.ctx.clock() - start
        received = sum(self._receive(msg) for src in sorted(got) for msg in got[src])
        if self.skew is not None:
            self.skew.observe(self.x - before_gossip)
        self.last_round = round_
        self.z = (self.x / self.w).astype(np.float32)
        return GossipResult(self.w, received, wait_s, sent, self.z)

    def _push(self, round_: int) -> dict[int, int]:
        for dst in self.transport.mailbox.departed & self._out.keys():  # what we owed a departed peer stays here
            self.x += self._out.pop(dst).debt
        out = self.ctx.live(self.topology.out_neighbours(self.peer_id, round_))
        if not out:
            return {}
        share = self.gamma / (len(out) + 1) * self.w
        z32 = (self.x / self.w).astype(np.float32)  # fresh each round: messages may alias it until they leave
        sent = {}
        for dst in out:
            link = self._out.setdefault(dst, _Link())
            link.seq += 1
            before = link.weight
            link.weight += share
            dw = np.float64(link.weight - before)  # exactly what the receiver will compute from the running sums
            tensors, withdrawn = self._outgoing(link, z32, dw)
            self.x -= withdrawn
            self.w -= dw
            self.transport.send(dst, KIND, round_, tensors, {"n": link.seq, "w": link.weight})
            x = tensors["x"]
            sent[dst] = len(x.indices) if isinstance(x, Sparse) else x.size
        return sent

    def _outgoing(self, link: _Link, z32: np.ndarray, dw: float) -> tuple[dict, np.ndarray]:
        """(the tensors of this link's message, the numerator mass it takes out of x: dw * z32, the model as sent).
        Dense: the model itself, which the receiver adds exactly."""
        return {"x": z32}, dw * z32

    def _receive(self, msg) -> int:
        """Fold one in-neighbour message into x and w; 1 if used, 0 if rejected."""
        link = self._in.get(msg.sender, _Link())
        n, w_sum = msg.meta["n"], msg.meta["w"]  # declared: an int >= 1 and a positive finite float
        problem = self._meta_problem(n, w_sum, link) or self._tensor_problem(msg, link)
        if problem:
            self.transport.reject(msg, problem)
            return 0
        if n == 1:
            link = _Link()  # the first message of a link (always dense), or of a restarted sender
        dw = np.float64(w_sum - link.weight)  # a numpy scalar: products with float32 arrays stay float64
        self.x += self._incoming(link, msg, dw)
        self.w += dw
        link.seq, link.weight = n, w_sum
        self._in[msg.sender] = link
        return 1

    def _meta_problem(self, n: int, w_sum: float, link: _Link) -> str | None:
        if n != 1 and n <= link.seq:
            return f"sequence number {n} does not advance past {link.seq}"
        base = _Link() if n == 1 else link
        # a message carries at most its sender's whole weight, and no weight exceeds the number of peers
        if not 0 < w_sum - base.weight <= (n - base.seq) * len(self.topology.ids):
            return f"weight sum went from {base.weight} to {w_sum} in {n - base.seq} message(s)"
        return None

    def _tensor_problem(self, msg, link: _Link) -> str | None:
        x = msg.tensors["x"]
        if not (isinstance(x, np.ndarray) and x.shape == self.x.shape and x.dtype == np.float32):
            return f"expected a dense float32 'x' of {self.x.size} entries"
        if not np.isfinite(x).all():
            return "non-finite entries in 'x'"
        return None

    def _incoming(self, link: _Link, msg, dw: float) -> np.ndarray:
        """The numerator mass a (valid) message adds to x, given the weight dw it brought."""
        return dw * msg.tensors["x"]
