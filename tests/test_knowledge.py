"""Direct knowledge transfer across in-process peers with stand-in models (flat vectors, fixed scores; no TF)."""
import time

import numpy as np

from conftest import stage_context
from dlion.knowledge import KnowledgeTransfer, merge
from dlion.stages import ModelAccess

PEERS = (0, 1, 2)


class Model:
    def __init__(self, value: float, loss: float, size: int = 1000):
        self.x = np.full(size, value, np.float32)
        self.loss = loss

    def access(self) -> ModelAccess:
        return ModelAccess(score=lambda: self.loss, get=lambda: self.x.copy(), set=self._set)

    def _set(self, x):
        self.x = x


def test_merge():
    np.testing.assert_allclose(merge(np.zeros(3, np.float32), np.full(3, 4.0, np.float32), 0.25), 1.0)
    assert merge(np.zeros(3, np.float32), np.ones(3, np.float32), 0.5).dtype == np.float32


def stages(transports, models, **params):
    p = KnowledgeTransfer.Params(**{"every": 5, "alpha": 0.5, "margin": 0.1, **params})
    return {i: KnowledgeTransfer(p, stage_context(transports, i, model=models[i].access())) for i in PEERS}


def run(st, iterations, start=1, peers=PEERS):
    events = {p: [] for p in peers}
    for it in range(start, start + iterations):
        for p in peers:
            event = st[p].step(it)
            if event:
                events[p].append((it, event))
    return events


def test_only_a_peer_worse_than_the_best_by_the_margin_fetches_and_merges(inproc):
    transports = inproc(PEERS)
    models = {0: Model(1.0, loss=0.30), 1: Model(2.0, loss=0.32), 2: Model(5.0, loss=0.60)}
    st = stages(transports, models)
    events = run(st, 7)
    assert events[0] == [] and events[1] == []  # peer 1 is within 10% of the best
    (it, event), = events[2]
    assert it == 6  # scored at 5, fetched at 5, the best peer answered at 6
    assert event["from"] == 0 and event["bytes"] > 4000 and event["own_loss"] == 0.6 and event["best_loss"] == 0.3
    np.testing.assert_allclose(models[2].x, 3.0)  # (1 - 0.5) * 5 + 0.5 * 1
    np.testing.assert_allclose(models[1].x, 2.0)
    assert transports[0].bytes_by_kind()["model"] == event["bytes"]
    assert "model" not in transports[1].bytes_by_kind()


def test_waits_for_missing_scores_only_for_its_patience(inproc):
    transports = inproc(PEERS)
    models = {0: Model(1.0, loss=0.30), 1: Model(2.0, loss=0.32), 2: Model(5.0, loss=0.60)}
    st = stages(transports, models, patience=3)
    run(st, 4, peers=(0, 2))  # peer 1 is silent
    assert run(st, 1, start=5, peers=(0, 2)) == {0: [], 2: []}  # scored; waiting for peer 1
    assert st[2]._fetch is None
    run(st, 3, start=6, peers=(0, 2))  # patience over at iteration 8: decides with peer 0's score
    assert st[2]._fetch is not None and st[2]._fetch["from"] == 0
    events = run(st, 2, start=9, peers=(0, 2))
    assert len(events[2]) == 1


def silent_best(transports):
    """Peer 0 scores best at round 5 but never steps, so it never answers a fetch."""
    for q in (1, 2):
        transports[0].send(q, "score", 5, None, {"loss": 0.30})


def test_a_bad_model_is_dropped_and_counted(inproc):
    transports = inproc(PEERS)
    models = {0: Model(1.0, loss=0.30), 1: Model(2.0, loss=0.32), 2: Model(5.0, loss=0.60)}
    st = stages(transports, models)
    silent_best(transports)
    run(st, 5, peers=(1, 2))
    assert st[2]._fetch["from"] == 0
    transports[0].send(2, "model", 5, {"x": np.zeros(7, np.float32)})
    assert run(st, 1, start=6, peers=(2,)) == {2: []}
    assert transports[2].stats()[0].dropped == 1
    np.testing.assert_allclose(models[2].x, 5.0)


def test_an_unanswered_fetch_is_abandoned_after_its_timeout(inproc):
    transports = inproc(PEERS)
    models = {0: Model(1.0, loss=0.30), 1: Model(2.0, loss=0.32), 2: Model(5.0, loss=0.60)}
    st = stages(transports, models, timeout_s=0.05)
    silent_best(transports)
    run(st, 5, peers=(1, 2))
    assert st[2]._fetch["from"] == 0
    run(st, 1, start=6, peers=(1, 2))
    assert st[2]._fetch is not None
    time.sleep(0.06)
    run(st, 1, start=7, peers=(1, 2))
    assert st[2]._fetch is None
    np.testing.assert_allclose(models[2].x, 5.0)


def test_no_fetch_over_a_link_too_slow_to_carry_the_model_within_the_budget(inproc):
    transports = inproc(PEERS)
    models = {0: Model(1.0, loss=0.30), 1: Model(2.0, loss=0.32), 2: Model(5.0, loss=0.60)}
    p = KnowledgeTransfer.Params(every=5, alpha=0.5, margin=0.1, transfer_budget_s=0.25)
    slow = {0: 1e5, 1: 1e9}  # 32,000 bits of model: 0.32 s from peer 0, 32 us from peer 1
    st = {i: KnowledgeTransfer(p, stage_context(transports, i, model=models[i].access(),
                                                inbound_bandwidths=slow if i == 2 else None)) for i in PEERS}
    events = run(st, 7)
    (it, event), = events[2]
    assert event["from"] == 1  # the best peer's link is too slow: the best one it can reach
