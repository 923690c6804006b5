"""Direct knowledge transfer: a peer that has fallen behind pulls the best peer's parameters and merges them.

Every `every` iterations each peer scores its model (loss on a held-out slice of its own data, never trained on) and
sends the score to every other peer. Once the scores of that round are in (or `patience` iterations later), a peer
whose loss exceeds the best peer's by more than `margin` (relative) sends that peer a fetch; the best peer answers
with its parameters when its loop next comes by, and the fetching peer merges them when they arrive:

    x <- (1 - alpha) x + alpha x_best

Nothing here blocks the training loop: every step only looks at what the mailbox already holds. A fetch that gets no
answer within `timeout_s` is abandoned. Each merge is reported with its bytes and its time from fetch to merge.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dlion.schema import between, option, positive

SCORE_KIND = "score"
FETCH_KIND = "fetch"
MODEL_KIND = "model"


def merge(own: np.ndarray, best: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) own + alpha best, as float32."""
    return ((1.0 - alpha) * own + alpha * best).astype(np.float32)


class NoKnowledge:
    """No knowledge transfer (the baseline)."""

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Params, peer_id: int, peer_ids, transport, model):
        pass

    def step(self, iteration: int) -> dict | None:
        return None


class KnowledgeTransfer:
    """Periodic quality scores; the worse peers fetch and merge the best peer's parameters."""

    @dataclass(frozen=True)
    class Params:
        every: int = option(50, check=positive, expect="a positive integer (iterations between quality scores)")
        alpha: float = option(0.5, check=lambda x: 0 < x <= 1, expect="a number in (0, 1]: weight of the best "
                                                                       "peer's parameters in the merge")
        margin: float = option(0.05, check=lambda x: x >= 0, expect="a non-negative fraction: how much higher than "
                                                                    "the best peer's loss a peer's must be to fetch")
        holdout: float = option(0.05, check=between(0.001, 0.5),
                                expect="a fraction in [0.001, 0.5] of each peer's training data kept for scores")
        patience: int = option(10, check=positive,
                               expect="a positive integer (iterations to wait for the other peers' scores)")
        timeout_s: float = option(30.0, check=positive, expect="a positive number of seconds to wait for a model")

    def __init__(self, params: Params, peer_id: int, peer_ids, transport, model: "ModelAccess"):
        self.params = params
        self.peer_id = peer_id
        self.others = tuple(p for p in sorted(peer_ids) if p != peer_id)
        self.transport = transport
        self.model = model
        self._served: dict[int, int] = {}     # peer -> round of the last fetch we answered
        self._scoring: tuple[int, float] | None = None  # (round, own loss) waiting for the others' scores
        self._fetch: dict | None = None       # the outstanding fetch

    def step(self, iteration: int) -> dict | None:
        """Serve fetches, score when due, decide, merge what arrived. Returns a `transfer` event when it merged."""
        self._serve()
        if iteration > 0 and iteration % self.params.every == 0:
            loss = float(self.model.score())
            self._scoring = (iteration, loss)
            for p in self._live():
                self.transport.send(p, SCORE_KIND, iteration, None, {"loss": loss})
        if self._scoring is not None:
            self._decide(iteration)
        return self._merge() if self._fetch is not None else None

    def _live(self) -> list[int]:
        departed = self.transport.mailbox.departed
        return [p for p in self.others if p not in departed]

    def _serve(self) -> None:
        for p in self._live():
            msg = self.transport.mailbox.latest(FETCH_KIND, p)
            if msg is not None and msg.round > self._served.get(p, -1):
                self._served[p] = msg.round
                self.transport.send(p, MODEL_KIND, msg.round, {"x": self.model.get()})

    def _decide(self, iteration: int) -> None:
        round_, own = self._scoring
        scores = {}
        for p in self._live():
            msg = self.transport.mailbox.latest_before(SCORE_KIND, p, round_ + 1)
            loss = msg.meta.get("loss") if msg is not None and msg.round == round_ else None
            if isinstance(loss, float) and math.isfinite(loss):
                scores[p] = loss
        if len(scores) < len(self._live()) and iteration < round_ + self.params.patience:
            return
        self._scoring = None
        if not scores or self._fetch is not None:
            return
        best = min(scores, key=lambda p: (scores[p], p))
        if own > scores[best] * (1 + self.params.margin):
            self.transport.send(best, FETCH_KIND, round_)
            self._fetch = {"from": best, "round": round_, "sent": time.monotonic(), "own_loss": own,
                           "best_loss": scores[best]}

    def _merge(self) -> dict | None:
        fetch = self._fetch
        msg = self.transport.mailbox.latest(MODEL_KIND, fetch["from"])
        if msg is None or msg.round != fetch["round"]:
            if time.monotonic() - fetch["sent"] > self.params.timeout_s:
                self._fetch = None
            return None
        self._fetch = None
        own = self.model.get()
        theirs = msg.tensors.get("x")
        if not isinstance(theirs, np.ndarray) or theirs.shape != own.shape or theirs.dtype != own.dtype \
                or not np.isfinite(theirs).all():
            self.transport.reject(msg, f"expected finite float32 parameters 'x' of shape {own.shape}")
            return None
        self.model.set(merge(own, theirs, self.params.alpha))
        return {"from": fetch["from"], "round": fetch["round"], "bytes": msg.nbytes,
                "time_s": round(time.monotonic() - fetch["sent"], 3), "own_loss": round(fetch["own_loss"], 5),
                "best_loss": round(fetch["best_loss"], 5), "alpha": self.params.alpha}


@dataclass(frozen=True)
class ModelAccess:
    """What the knowledge stage may do with the model: score it, read and overwrite its flat parameters."""

    score: Callable[[], float]
    get: Callable[[], np.ndarray]
    set: Callable[[np.ndarray], None]


STRATEGIES = {"none": NoKnowledge, "dkt": KnowledgeTransfer}
