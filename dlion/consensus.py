"""The final average: once training is over, the peers end with one model (`rounds.final_average`).

Gossip leaves the peers' models close but not equal, and a peer that joined the stop late, or sits behind a slow
link, ends a little behind the others. A user wants one model at the end. So every peer sends its model, with its
push-sum weight, to every live peer, waits until each has sent its own (or until the timeout, or until that peer
left), and takes the average weighted by push-sum weight: the sum of the peers' push-sum masses over the sum of their
weights, which is what push-sum converges to (weight 1 each without push-sum: the plain mean). A peer that has not
sent its model by then is left out, so peers may end with averages of different sets after a failure.

Models go in float16 where they fit, as the prioritized exchange's changes do: the average then differs from the
float32 one by at most the float16 rounding of the received models, far below what changes an accuracy. A received
weight counts at most as the whole system's (the number of peers), so one sender cannot outweigh every other by
claiming a huge weight; its model passes the norm guard like any model.
"""
from __future__ import annotations

import numpy as np

from dlion import messages
from dlion.compression import rounded
from dlion.stages import StageContext


class FinalAverage:
    def __init__(self, ctx: StageContext, timeout_s: float, half: bool = True):
        self.ctx, self.timeout_s, self.half = ctx, timeout_s, half
        self.transport = ctx.transport

    def run(self, round_: int, weight: float) -> dict:
        """Send this peer's model, wait for the others', and set the model to the weighted average. Returns the
        `average` event's figures: who was averaged in, the wait and the bytes received."""
        own = self.ctx.model.get()
        peers = self.ctx.live(self.ctx.others)
        sent = rounded(own, self.half)
        self.transport.guard.observe(messages.FINAL_MODEL, {"x": own})  # what the others' models are judged by
        for p in peers:
            self.transport.send(p, messages.FINAL_MODEL, round_, {"x": sent}, {"w": weight})
        began = self.ctx.clock()
        self.transport.mailbox.wait_for(messages.FINAL_MODEL, 0, peers, began + self.timeout_s)
        wait_s = self.ctx.clock() - began
        mass, total, used, received = own.astype(np.float64) * weight, weight, [], 0
        for p in self.ctx.others:
            msg = self.transport.mailbox.latest(messages.FINAL_MODEL, p)
            if msg is None:
                continue
            theirs = msg.tensors["x"]
            if not isinstance(theirs, np.ndarray) or theirs.shape != own.shape or theirs.dtype.kind != "f":
                self.transport.reject(msg, "shape", f"expected parameters 'x' of shape {own.shape}")
                continue
            w = min(float(msg.meta["w"]), float(len(self.ctx.peer_ids)))
            mass += w * theirs.astype(np.float64)
            total += w
            used.append(p)
            received += msg.nbytes
        if total > 0:  # (a drained peer alone has nothing to average)
            self.ctx.model.set((mass / total).astype(own.dtype))
        return {"peers": used, "wait_s": round(wait_s, 3), "bytes_received": received}
