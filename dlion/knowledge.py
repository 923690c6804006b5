"""Direct knowledge transfer: a peer that has fallen behind pulls the best peer's parameters and merges them.

Every `every` iterations each peer scores its model (loss on a held-out slice of its own data, never trained on) and
sends the score to every other peer. Once the scores of that round are in (or `patience` iterations later), a peer
whose loss exceeds the best peer's by more than `margin` (relative) sends that peer a fetch; the best peer answers
with its parameters when its loop next comes by, and the fetching peer merges them when they arrive. Only peers whose
link to the fetching one carries the model within `transfer_budget_s` are fetched from, so a model never holds up
the round messages behind it on a slow link for longer than that:

    x <- (1 - alpha) x + alpha x_best

Nothing here blocks the training loop: every step only looks at what the mailbox already holds. A fetch that gets no
answer within `timeout_s` is abandoned. Each merge is reported with its bytes and its time from fetch to merge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from dlion import messages
from dlion.schema import between, non_negative, option, positive
from dlion.stages import Requirements, StageContext, Strategy


def merge(own: np.ndarray, best: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) own + alpha best, as float32."""
    return ((1.0 - alpha) * own + alpha * best).astype(np.float32)


class NoKnowledge(Strategy):
    """No knowledge transfer (the baseline)."""

    def __init__(self, params: Strategy.Params, ctx: StageContext):
        pass

    def step(self, iteration: int) -> dict | None:
        return None


class KnowledgeTransfer(Strategy):
    """Periodic quality scores; the worse peers fetch and merge the best peer's parameters."""

    @dataclass(frozen=True)
    class Params:
        every: int = option(50, check=positive, expect="a positive integer (iterations between quality scores)")
        alpha: float = option(0.5, check=lambda x: 0 < x <= 1, expect="a number in (0, 1]: weight of the best "
                                                                       "peer's parameters in the merge")
        margin: float = option(0.05, check=non_negative, expect="a non-negative fraction: how much higher than "
                                                                "the best peer's loss a peer's must be to fetch")
        holdout: float = option(0.05, check=between(0.001, 0.5),
                                expect="a fraction in [0.001, 0.5] of each peer's training data kept for scores")
        patience: int = option(10, check=positive,
                               expect="a positive integer (iterations to wait for the other peers' scores)")
        timeout_s: float = option(30.0, check=positive, expect="a positive number of seconds to wait for a model")
        transfer_budget_s: Optional[float] = option(
            0.25, check=positive, expect="a positive number of seconds: fetch only from a peer whose link to this one "
                                        "carries the model within it (its measured rate, else its configured one); "
                                        "null for any peer")

    @classmethod
    def requires(cls, params: Params) -> Requirements:
        return Requirements(holdout=params.holdout)

    def __init__(self, params: Params, ctx: StageContext):
        self.params = params
        self.ctx = ctx
        self.transport = ctx.transport
        self.model = ctx.model
        self._served: dict[int, int] = {}     # peer -> round of the last fetch we answered
        self._scoring: tuple[int, float] | None = None  # (round, own loss) waiting for the others' scores
        self._fetch: dict | None = None       # the outstanding fetch
        self._model_bits: int | None = None

    def step(self, iteration: int) -> dict | None:
        """Serve fetches, score when due, decide, merge what arrived. Returns a `transfer` event when it merged."""
        self._serve()
        if iteration > 0 and iteration % self.params.every == 0:
            loss = float(self.model.score())
            self._scoring = (iteration, loss)
            for p in self._live():
                self.transport.send(p, messages.SCORE, iteration, None, {"loss": loss})
        if self._scoring is not None:
            self._decide(iteration)
        return self._merge() if self._fetch is not None else None

    def _live(self) -> list[int]:
        return self.ctx.live(self.ctx.others)

    def _serve(self) -> None:
        for p in self._live():
            msg = self.transport.mailbox.latest(messages.FETCH, p)
            if msg is not None and msg.round > self._served.get(p, -1):
                self._served[p] = msg.round
                self.transport.send(p, messages.MODEL, msg.round, {"x": self.model.get()})

    def _decide(self, iteration: int) -> None:
        round_, own = self._scoring
        scores = {}
        for p in self._live():
            msg = self.transport.mailbox.latest_before(messages.SCORE, p, round_ + 1)
            if msg is not None and msg.round == round_:
                scores[p] = msg.meta["loss"]  # declared a finite float
        if len(scores) < len(self._live()) and iteration < round_ + self.params.patience:
            return
        self._scoring = None
        if not scores or self._fetch is not None:
            return
        reachable = [p for p in scores if self._deliverable(p)]
        if not reachable:
            return
        best = min(reachable, key=lambda p: (scores[p], p))
        if own > scores[best] * (1 + self.params.margin):
            self.transport.guard.observe(messages.MODEL, {"x": self.model.get()})  # what the model is judged by
            self.transport.send(best, messages.FETCH, round_)
            self._fetch = {"from": best, "round": round_, "sent": self.ctx.clock(), "own_loss": own,
                           "best_loss": scores[best]}

    def _deliverable(self, peer: int) -> bool:
        """Whether the link from `peer` carries our model within the transfer budget: a model that takes longer
        would hold up the round messages behind it on that link."""
        budget = self.params.transfer_budget_s
        if budget is None:
            return True
        if self._model_bits is None:
            self._model_bits = 32 * self.model.get().size
        bps = self.transport.inbound_bandwidth(peer) or self.ctx.inbound_bandwidths.get(peer)
        return bps is None or self._model_bits / bps <= budget

    def _merge(self) -> dict | None:
        fetch = self._fetch
        msg = self.transport.mailbox.latest(messages.MODEL, fetch["from"])
        if msg is None or msg.round != fetch["round"]:
            if self.ctx.clock() - fetch["sent"] > self.params.timeout_s:
                self._fetch = None
            return None
        self._fetch = None
        own = self.model.get()
        theirs = msg.tensors["x"]
        if not isinstance(theirs, np.ndarray) or theirs.shape != own.shape or theirs.dtype != own.dtype:
            self.transport.reject(msg, "shape", f"expected float32 parameters 'x' of shape {own.shape}")
            return None
        self.model.set(merge(own, theirs, self.params.alpha))
        return {"from": fetch["from"], "round": fetch["round"], "bytes": msg.nbytes,
                "time_s": round(self.ctx.clock() - fetch["sent"], 3), "own_loss": round(fetch["own_loss"], 5),
                "best_loss": round(fetch["best_loss"], 5), "alpha": self.params.alpha}


STRATEGIES = {"none": NoKnowledge, "dkt": KnowledgeTransfer}
