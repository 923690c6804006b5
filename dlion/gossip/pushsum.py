"""Push-sum gossip of the model (stochastic gradient push, SGP) on directed, time-varying graphs: the dense reference,
and the engine Sparse-Push shares.

Each peer keeps a numerator x (float64) and a weight w (1 at the start), and trains the de-biased model z = x / w.
One round t, `step(t, params)`:

1. Local update: x += w * (params - z_last), i.e. whatever changed the parameters since the last step (the
   optimizer's steps on z, or a state taken at a rejoin), scaled by the weight so that z moves by exactly that
   change. SGP adds the step unscaled, which moves z by the step divided by w: harmless while weights stay near 1,
   but a peer whose weight drained (its in-neighbours stopped pushing to it: restarted, suspended links) would take
   steps amplified 1/w-fold and diverge. Plus the flow-integral skew compensation's correction when it is on
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

Missed rounds and lost messages: weight is restored, not lost. Every message carries its link's epoch "e", a
sequence number "n" and the running sum "w" of the weight pushed on the link in that epoch; the receiver adds the
growth of that sum since the last message it used on the link, valued at the model the message carries. So:
- A receiver that skips rounds (calls `step` for a later round), or that receives a round's message after its own
  round passed, folds it in with the next round's: the mailbox keeps what was not collected. Exact, nothing lost,
  as every message is used once and in order.
- A sender that skips a round sends nothing and keeps its share: nothing in flight, nothing lost.
- A message the receiver cannot use (lost, rejected) leaves its weight in the running sum;
  the link's next delivered message carries it, so the total weight is restored exactly at that delivery, and the
  numerator with it at the sender's newer model (off by the missed weight times how far that model moved meanwhile:
  nothing once the models agree). Until then the weight is in flight: sum(w) + in flight = number of peers, always.

A link that delivers nothing: the receiver answers every round in which it used a link's messages with a `credit`
(the running sum it has used, and the epoch). Weight pushed but not credited is in flight. After `suspend_after`
pushes in a row without a new credit (a link that swallows messages: a peer that no longer reads, a connection that
went nowhere, or just a slow receiver) the sender stops pushing on the link, so no more weight drains into it, and
resumes when a credit comes. When the link's receiver departs, or no credit has come for `reclaim_after_s`, the
sender takes the weight in flight back, valued at its current model (so its z does not move), and starts the link
afresh in a new epoch (dense first message, running sums from zero); the receiver drops messages of an older epoch
than its link's: their weight is back with the sender. (Were a receiver silent that long and then to use old
messages before the new epoch's first, that weight would count twice: a slower drift of the ratio, not a loss.) So
weight never drains into a dead link, and z = x / w stays well defined. Only a departed peer takes mass out of the system (its own
and what it had used); push-sum's ratio keeps every survivor's z a convex combination, and they converge to the
average of what remains. Epochs start at the sender process's start time in microseconds, so a restarted sender's
links are always newer than its predecessor's.

Messages are `gossip` messages: tensor "x" (float32: dense, or `wire.Sparse` for Sparse-Push, with "owed") and meta
e, n, w. A message with a wrong size or dtype, a weight sum that did not grow plausibly, a weight that would take
the receiver's beyond twice the number of peers, a sequence number that did not advance or an old epoch is dropped
with `transport.reject` (non-finite values never get this far: the transport drops them).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dlion import messages
from dlion.gossip.skew import SkewCompensation
from dlion.schema import non_negative, option, positive
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

    def take_weight(self, weight: float) -> None:
        pass  # no weights


@dataclass
class _Link:
    """One directed link's state, alike at both ends: its epoch, messages so far, the running sum of the weight
    pushed, and (Sparse-Push) the public copy of the sender's model; the sender also keeps the link's debt, the
    running sum its receiver credited, and the pushes since that credit last grew."""

    epoch: int = 0
    seq: int = 0
    weight: float = 0.0
    copy: np.ndarray | None = None
    debt: np.ndarray | float = 0.0  # numerator mass owed on the link, not sent yet (Sparse-Push)
    credited: float = 0.0
    uncredited_pushes: int = 0
    credited_at: float = 0.0  # when the receiver's credit last grew (or the link started), by the stage's clock

    @property
    def in_flight(self) -> float:
        """Weight pushed on the link that its receiver has not credited (yet)."""
        return self.weight - self.credited


class PushSum(Strategy):
    """Dense push-sum (SGP): each round, split x and w equally among self and the round's out-neighbours."""

    gamma = 1.0  # share of the push-sum mixing applied each round: dense push-sum moves all of it
    DENSE_DTYPES: tuple = (np.float32,)  # what a dense model ("x") may arrive as

    @dataclass(frozen=True)
    class Params:
        deadline_s: float = option(5.0, check=positive, expect="a positive number of seconds to wait for the "
                                                                 "round's in-neighbours")
        staleness: int = option(0, check=non_negative,
                                expect="a non-negative integer: gossip rounds an in-neighbour may lag before the peer "
                                       "waits for it (0: lockstep)")
        every: int = option(1, check=positive, expect="a positive integer: training rounds per gossip round")
        suspend_after: int = option(16, check=positive,
                                    expect="a positive integer: pushes on a link without a new credit from its "
                                           "receiver before the sender stops pushing on it (until a credit comes)")
        reclaim_after_s: float = option(30.0, check=positive,
                                        expect="a positive number of seconds without a credit on a link before the "
                                               "sender takes its weight in flight back and restarts the link")
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
        self._epochs = itertools.count(time.time_ns() // 1000)  # above every epoch of an earlier process of ours
        self.reclaimed = 0.0  # weight taken back from links that delivered nothing, so far

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
            self.x = params.astype(np.float64) * self.w
            if self.params.skew_compensation == "flow-integral":
                self.skew = SkewCompensation(params.size, self.params.skew_gain, self.params.skew_leak)
        else:
            self.x += self.w * (params - self.z)
        if self.skew is not None:
            self.x += self.skew.correction()
        before_gossip = None if self.skew is None else self.x.copy()
        sent = self._push(round_)
        lag = self.params.staleness
        expected = self.topology.in_neighbours(self.peer_id, max(0, round_ - lag))
        start = self.ctx.clock()
        got = self.transport.mailbox.collect(KIND, round_, expected, start + self.params.deadline_s, lag)
        wait_s = self.ctx.clock() - start
        received = 0
        for src in sorted(got):
            used = sum(self._receive(msg) for msg in got[src])
            if used:
                link = self._in[src]
                self.transport.send(src, messages.CREDIT, round_, None, {"w": link.weight, "e": link.epoch})
            received += used
        if self.skew is not None:
            self.skew.observe(self.x - before_gossip)
        self.last_round = round_
        self.z = (self.x / self.w).astype(np.float32)
        return GossipResult(self.w, received, wait_s, sent, self.z)

    def take_weight(self, weight: float) -> None:
        """Hold `weight` from now on, the model unchanged: a restarted peer takes back its own share of the total
        weight from its replica (`dlion.replica`)."""
        if self.x is not None:
            self.x *= weight / self.w
        self.w = weight

    def _take_back(self, dst: int) -> None:
        """Take the weight in flight on the link to `dst` back, valued at the current model, and what it owes."""
        link = self._out.pop(dst)
        z = self.x / self.w
        self.x += link.in_flight * z + link.debt
        self.w += link.in_flight
        self.reclaimed += link.in_flight

    def _check_links(self) -> frozenset[int]:
        """Credits in; links to departed peers, and links without a credit for long, given up; returns the links
        suspended (module docstring)."""
        now = self.ctx.clock()
        departed = self.transport.mailbox.departed
        suspended = set()
        for dst, link in list(self._out.items()):
            credit = self.transport.mailbox.latest(messages.CREDIT, dst)
            if (credit is not None and credit.meta["e"] == link.epoch
                    and link.credited < credit.meta["w"] <= link.weight * (1 + 1e-12)):
                link.credited, link.uncredited_pushes, link.credited_at = credit.meta["w"], 0, now
            if dst in departed:  # after its last credit: what it used before leaving is not taken back twice
                self._take_back(dst)
            elif link.in_flight > 0 and now - link.credited_at > self.params.reclaim_after_s:
                self._take_back(dst)
            elif link.uncredited_pushes >= self.params.suspend_after:
                suspended.add(dst)
        return frozenset(suspended)

    def _push(self, round_: int) -> dict[int, int]:
        suspended = self._check_links()
        out = [p for p in self.ctx.live(self.topology.out_neighbours(self.peer_id, round_)) if p not in suspended]
        if not out:
            return {}
        share = self.gamma / (len(out) + 1) * self.w
        z32 = (self.x / self.w).astype(np.float32)  # fresh each round: messages may alias it until they leave
        sent = {}
        for dst in out:
            link = self._out.get(dst) or self._out.setdefault(dst, _Link(epoch=next(self._epochs),
                                                                          credited_at=self.ctx.clock()))
            link.seq += 1
            link.uncredited_pushes += 1
            before = link.weight
            link.weight += share
            dw = np.float64(link.weight - before)  # exactly what the receiver will compute from the running sums
            tensors, withdrawn = self._outgoing(link, z32, dw)
            self.x -= withdrawn
            self.w -= dw
            self.transport.send(dst, KIND, round_, tensors, {"n": link.seq, "w": link.weight, "e": link.epoch})
            x = tensors["x"]
            sent[dst] = len(x.indices) if isinstance(x, Sparse) else x.size
        return sent

    def _outgoing(self, link: _Link, z32: np.ndarray, dw: float) -> tuple[dict, np.ndarray]:
        """(the tensors of this link's message, the numerator mass it takes out of x: dw * z32, the model as sent).
        Dense: the model itself, which the receiver adds exactly."""
        return {"x": z32}, dw * z32

    def _receive(self, msg) -> int:
        """Fold one in-neighbour message into x and w; 1 if used, 0 if rejected."""
        epoch, n, w_sum = msg.meta["e"], msg.meta["n"], msg.meta["w"]  # declared: ints >= 0, >= 1; finite float > 0
        link = self._in.get(msg.sender, _Link(epoch=-1))
        if epoch > link.epoch:
            link = _Link(epoch=epoch)  # a new link: the first of its sender, a restarted sender, or a restart
        rejected = self._meta_problem(epoch, n, w_sum, link) or self._tensor_problem(msg, link)
        if rejected:
            self.transport.reject(msg, *rejected)
            return 0
        dw = np.float64(w_sum - link.weight)  # a numpy scalar: products with float32 arrays stay float64
        self.x += self._incoming(link, msg, dw)
        self.w += dw
        link.seq, link.weight = n, w_sum
        self._in[msg.sender] = link
        return 1

    def _meta_problem(self, epoch: int, n: int, w_sum: float, link: _Link) -> tuple[str, str] | None:
        if epoch < link.epoch:
            return "old epoch", f"epoch {epoch} is older than the link's {link.epoch}: its weight went back"
        if n <= link.seq:
            return "sequence", f"sequence number {n} does not advance past {link.seq}"
        # a message carries at most its sender's whole weight, and no weight exceeds the number of peers
        peers = len(self.topology.ids)
        if not 0 < w_sum - link.weight <= (n - link.seq) * peers:
            return "weight", f"weight sum went from {link.weight} to {w_sum} in {n - link.seq} message(s)"
        if self.w + w_sum - link.weight > 2 * peers:
            return "weight", f"it would take this peer's weight to {self.w + w_sum - link.weight} (2 x {peers} peers)"
        return None

    def _tensor_problem(self, msg, link: _Link) -> tuple[str, str] | None:
        x = msg.tensors["x"]
        if not (isinstance(x, np.ndarray) and x.shape == self.x.shape and x.dtype in self.DENSE_DTYPES):
            names = "/".join(np.dtype(d).name for d in self.DENSE_DTYPES)
            return "shape", f"expected a dense {names} 'x' of {self.x.size} entries"
        return None

    def _incoming(self, link: _Link, msg, dw: float) -> np.ndarray:
        """The numerator mass a (valid) message adds to x, given the weight dw it brought."""
        return dw * msg.tensors["x"]
