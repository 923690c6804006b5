"""The final average: once training is over, the peers end with one model (`rounds.final_average`); and `gather`,
the exchange it makes (every live peer's message of a kind, within a timeout), which the classifier refit
(`dlion.classifier`) makes too.

Gossip leaves the peers' models close but not equal, and a peer that joined the stop late, or sits behind a slow
link, ends a little behind the others. A user wants one model at the end. So every peer sends its model, with its
push-sum weight, to every live peer, waits until each has sent its own (or until the timeout, or until that peer
left), and takes the average weighted by push-sum weight: the sum of the peers' push-sum masses over the sum of their
weights, which is what push-sum converges to (weight 1 each without push-sum: the plain mean). A peer that has not
sent its model by then is left out, so peers may end with averages of different sets after a failure.

Models go in float16 where they fit, as the prioritized exchange's changes do: the average then differs from the
float32 one by at most the float16 rounding of the models, far below what changes an accuracy. A peer averages its
own model as it sent it, and sums the models in the peers' order, so peers that averaged the same set end with
exactly the same model (the classifier refit then starts from one body everywhere). A received
weight counts at most as the whole system's (the number of peers), so one sender cannot outweigh every other by
claiming a huge weight; its model passes the norm guard like any model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dlion import messages
from dlion.compression import rounded
from dlion.stages import StageContext
from dlion.transport.wire import Message


@dataclass(frozen=True)
class Gathered:
    """What an end-of-training exchange collected: the usable messages, the wait and their bytes."""

    messages: list[Message]
    wait_s: float
    nbytes: int


def gather(ctx: StageContext, kind: str, round_: int, tensors: dict, timeout_s: float,
           check: Callable[[Message], tuple[str, str] | None], meta: dict | None = None) -> Gathered:
    """Send `tensors` (and `meta`) as `kind` to every live peer, wait until each has sent its own (or until the
    timeout, or until it left), and keep the latest message of each other peer that `check` finds no problem with
    ((reason, detail) drops and counts it)."""
    transport = ctx.transport
    peers = ctx.live(ctx.others)
    for p in peers:
        transport.send(p, kind, round_, tensors, meta or {})
    began = ctx.clock()
    transport.mailbox.wait_for(kind, 0, peers, began + timeout_s)
    wait_s = ctx.clock() - began
    kept = []
    for p in ctx.others:
        msg = transport.mailbox.latest(kind, p)
        if msg is None:
            continue
        if found := check(msg):
            transport.reject(msg, *found)
            continue
        kept.append(msg)
    return Gathered(kept, round(wait_s, 3), sum(msg.nbytes for msg in kept))


class FinalAverage:
    def __init__(self, ctx: StageContext, timeout_s: float, half: bool = True):
        self.ctx, self.timeout_s, self.half = ctx, timeout_s, half
        self.transport = ctx.transport

    def run(self, round_: int, weight: float) -> dict:
        """Send this peer's model, wait for the others', and set the model to the weighted average. Returns the
        `average` event's figures: who was averaged in, the wait and the bytes received."""
        own = self.ctx.model.get()
        self.transport.guard.observe(messages.FINAL_MODEL, {"x": own})  # what the others' models are judged by

        def check(msg):
            theirs = msg.tensors["x"]
            if not isinstance(theirs, np.ndarray) or theirs.shape != own.shape or theirs.dtype.kind != "f":
                return "shape", f"expected parameters 'x' of shape {own.shape}"
            return None

        sent = rounded(own, self.half)
        got = gather(self.ctx, messages.FINAL_MODEL, round_, {"x": sent}, self.timeout_s, check, {"w": weight})
        models = {self.ctx.peer_id: (sent, weight)}
        models.update({msg.sender: (msg.tensors["x"], min(float(msg.meta["w"]), float(len(self.ctx.peer_ids))))
                       for msg in got.messages})
        mass, total = np.zeros(own.shape, np.float64), 0.0
        for peer in sorted(models):
            x, w = models[peer]
            mass += w * x.astype(np.float64)
            total += w
        if total > 0:  # (a drained peer alone has nothing to average)
            self.ctx.model.set((mass / total).astype(own.dtype))
        return {"peers": [msg.sender for msg in got.messages], "wait_s": got.wait_s, "bytes_received": got.nbytes}
