"""The final average across in-process peers with stand-in models (flat vectors; no TF)."""
import numpy as np

from conftest import in_threads, stage_context
from dlion import messages
from dlion.consensus import FinalAverage
from dlion.stages import ModelAccess

PEERS = (0, 1, 2)


class Model:
    def __init__(self, value: float, size: int = 1000):
        self.x = np.full(size, value, np.float32)

    def access(self) -> ModelAccess:
        return ModelAccess(score=lambda: 0.0, get=lambda: self.x.copy(), set=self._set)

    def _set(self, x):
        self.x = x


def averages(transports, models, timeout_s=5.0):
    return {p: FinalAverage(stage_context(transports, p, model=models[p].access()), timeout_s) for p in transports}


def test_every_peer_ends_with_the_push_sum_weighted_average(inproc):
    transports = inproc(PEERS)
    models = {0: Model(1.0), 1: Model(2.0), 2: Model(4.0)}
    weights = {0: 0.5, 1: 1.5, 2: 1.0}  # push-sum weights sum to the number of peers
    avg = averages(transports, models)
    events = in_threads(lambda p: avg[p].run(10 + p, weights[p]), PEERS)
    expected = (0.5 * 1.0 + 1.5 * 2.0 + 1.0 * 4.0) / 3.0  # the sum of the masses over the sum of the weights
    for p in PEERS:
        np.testing.assert_allclose(models[p].x, expected, rtol=1e-3)  # float16 models on the wire
        assert models[p].x.dtype == np.float32
        assert sorted(events[p]["peers"]) == [q for q in PEERS if q != p]
        assert events[p]["bytes_received"] > 2 * 2000  # two float16 models of 1000 entries
    assert transports[0].bytes_by_kind()[messages.FINAL_MODEL] < 2 * 4000  # float16, not float32


def test_a_departed_peer_is_not_waited_for_and_a_silent_one_only_until_the_timeout(inproc):
    transports = inproc(PEERS)
    models = {0: Model(1.0), 1: Model(3.0), 2: Model(100.0)}
    transports[2].close()  # said bye: departed
    avg = averages(transports, models, timeout_s=0.3)
    events = in_threads(lambda p: avg[p].run(5, 1.0), (0, 1))
    for p in (0, 1):
        np.testing.assert_allclose(models[p].x, 2.0, rtol=1e-3)
        assert events[p]["wait_s"] < 0.3
    transports = inproc(PEERS)
    models = {0: Model(1.0), 1: Model(3.0), 2: Model(100.0)}
    event = averages(transports, models, timeout_s=0.3)[0].run(5, 1.0)  # peers 1 and 2 never send
    assert event["peers"] == [] and event["wait_s"] >= 0.3
    np.testing.assert_allclose(models[0].x, 1.0)


def peer_0_averages(inproc, sent):
    """Peer 0's final average (model 1.0, weight 1) of what peers 1 and 2 send it: {sender: (x, w)}."""
    transports = inproc(PEERS)
    models = {p: Model(1.0) for p in PEERS}
    for sender, (x, w) in sent.items():
        transports[sender].send(0, messages.FINAL_MODEL, 3, {"x": x}, {"w": w})
    event = averages(transports, models, timeout_s=1.0)[0].run(3, 1.0)
    return event, models[0].x, transports[0].rejections().get(messages.FINAL_MODEL, {})


def test_a_hostile_weight_counts_at_most_as_the_whole_system_and_a_wrong_shape_is_dropped(inproc):
    event, x, rejected = peer_0_averages(inproc, {1: (np.full(1000, 1.5, np.float32), 1e30),
                                                 2: (np.full(10, 1.0, np.float32), 1.0)})
    assert event["peers"] == [1]
    np.testing.assert_allclose(x, (1.0 + 3 * 1.5) / 4)  # weight 1e30 counted as 3
    assert rejected["shape"] == 1


def test_a_model_far_larger_than_the_peers_own_is_rejected_by_the_norm_guard(inproc):
    event, x, rejected = peer_0_averages(inproc, {1: (np.full(1000, 1e4, np.float32), 1.0),
                                                 2: (np.full(1000, 2.0, np.float32), 1.0)})
    assert event["peers"] == [2]
    np.testing.assert_allclose(x, 1.5)
    assert sum(rejected.values()) == 1
