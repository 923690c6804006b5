"""Dense BSP exchange over the in-process transport: weighted mean, bad gradients rejected, dead peers cost a deadline."""
import threading
import time

import numpy as np
import pytest

from conftest import in_threads, stage_context
from dlion.exchange import DenseExchange, NoExchange
from dlion.topology import Topology, TopologySpec

PEERS = (0, 1, 2)
FULL = Topology(TopologySpec("full"), PEERS)


@pytest.fixture
def transports(inproc):
    return inproc(PEERS)


def exchanges(transports, deadline_s=2.0, graph=FULL):
    params = DenseExchange.Params(deadline_s=deadline_s)
    return {p: DenseExchange(params, stage_context(transports, p, graph)) for p in PEERS}


def run_round(ex, round_, grads, weights, peers=PEERS):
    return in_threads(lambda p: ex[p].exchange(round_, grads[p], weights[p]), peers)


def test_every_peer_gets_the_batch_weighted_mean(transports):
    ex = exchanges(transports)
    rng = np.random.default_rng(0)
    grads = {p: rng.normal(size=1000).astype(np.float32) for p in PEERS}
    weights = {0: 10, 1: 30, 2: 60}
    expected = sum(grads[p] * weights[p] for p in PEERS) / 100
    for round_ in range(3):
        results = run_round(ex, round_, grads, weights)
        for p in PEERS:
            assert results[p].received == 2
            np.testing.assert_allclose(results[p].grads, expected, rtol=1e-5, atol=1e-6)


def test_a_dead_neighbour_costs_one_deadline_then_is_no_longer_waited_for(transports):
    ex = exchanges(transports, deadline_s=0.3)
    grads = {p: np.full(10, p, np.float32) for p in PEERS}
    weights = {p: 1 for p in PEERS}
    waits = []
    for round_ in range(5):  # peer 2 never takes part
        results = run_round(ex, round_, grads, weights, peers=(0, 1))
        waits.append(results[0].wait_s)
        np.testing.assert_allclose(results[0].grads, 0.5)
    assert 0.3 <= waits[0] < 0.6 and 0.3 <= waits[1] < 0.6, waits  # suspect_after = 2 missed rounds
    assert max(waits[2:]) < 0.1, waits


def test_malformed_gradients_are_rejected_and_counted(transports):
    ex = exchanges(transports, deadline_s=0.5)
    good = np.ones(8, np.float32)
    transports[1].send(0, "grad", 0, {"g": np.ones(5, np.float32)}, {"w": 1.0})       # wrong length
    transports[2].send(0, "grad", 0, {"g": np.full(8, np.nan, np.float32)}, {"w": 1.0})  # not finite
    result = ex[0].exchange(0, good, 2)
    assert result.received == 0
    np.testing.assert_array_equal(result.grads, good)
    transports[1].send(0, "grad", 1, {"g": good * 3}, {"w": -1})                      # bad weight: not filed
    transports[2].send(0, "grad", 1, {"g": good * 3}, {"w": 2.0})
    result = ex[0].exchange(1, good, 2)
    assert result.received == 1
    np.testing.assert_allclose(result.grads, 2.0)
    stats = transports[0].stats()
    assert stats[1].dropped == 2 and stats[2].dropped == 1


def test_on_a_time_varying_directed_graph_a_peer_combines_only_its_in_neighbours(transports):
    graph = Topology(TopologySpec("one-peer-exponential"), PEERS)  # round 0: p -> p + 1, round 1: p -> p + 2
    ex = exchanges(transports, graph=graph)
    grads = {p: np.full(4, 3.0 ** p, np.float32) for p in PEERS}  # 1, 3, 9: within the norm guard's ratio
    weights = {0: 1, 1: 1, 2: 2}
    for round_ in range(4):
        results = run_round(ex, round_, grads, weights)
        for p in PEERS:
            (src,) = graph.in_neighbours(p, round_)
            assert results[p].received == 1
            expected = (grads[p] * weights[p] + grads[src] * weights[src]) / (weights[p] + weights[src])
            np.testing.assert_allclose(results[p].grads, expected, rtol=1e-6)
    assert all(transports[p].stats()[q].msgs_sent == 2 for p in PEERS for q in PEERS if q != p)


def test_no_exchange_applies_the_peers_own_gradient_and_sends_nothing(transports):
    ex = NoExchange(NoExchange.Params(), stage_context(transports, 0))
    grads = np.arange(5, dtype=np.float32)
    result = ex.exchange(0, grads, 32)
    assert result.grads is grads and (result.received, result.wait_s) == (0, 0.0)
    assert all(s.msgs_sent == 0 for s in transports[0].stats().values())


def test_staleness_weights_decay_polynomially():
    from dlion.exchange.dense import staleness_weight
    assert staleness_weight(0, 0.5) == 1.0 and staleness_weight(3, 0.5) == 0.5 and staleness_weight(3, 0.0) == 1.0


def test_with_staleness_a_late_gradient_is_used_next_round_at_its_staleness_weight(transports):
    params = DenseExchange.Params(deadline_s=2.0, staleness=1, staleness_exponent=1.0)
    ex = {p: DenseExchange(params, stage_context(transports, p)) for p in PEERS}
    ones = np.ones(4, np.float32)
    ex[1].exchange(0, ones * 3, 1)
    start = time.monotonic()
    first = ex[0].exchange(0, ones * 0, 1)
    assert time.monotonic() - start < 0.5, "peer 2 is not more than one round behind: nobody waits for it"
    np.testing.assert_allclose(first.grads, 1.5)  # its own and peer 1's round 0
    transports[2].send(0, "grad", 0, {"g": ones * 6}, {"w": 1.0})  # peer 2's round 0 comes in late
    result = ex[0].exchange(1, ones * 0, 1)
    # round 1: its own (weight 1) and peer 2's round 0 at weight 1 / (1 + 1); peer 1's round 1 is not there yet
    np.testing.assert_allclose(result.grads, (6 * 0.5) / 1.5)
    assert result.received == 1


def test_a_rejoined_peers_first_rounds_count_the_unheard_neighbours_as_zero_updates(transports):
    """Back at round 10 it waits for nobody before the others' round-10 messages come (they never sent it rounds 8
    and 9); its own round alone must not move it at full weight from the state it took."""
    params = DenseExchange.Params(deadline_s=2.0, staleness=2, staleness_exponent=1.0)
    ex = {p: DenseExchange(params, stage_context(transports, p)) for p in PEERS}
    transports[0].back([1, 2], 10)
    ones = np.ones(4, np.float32)
    start = time.monotonic()
    first = ex[0].exchange(10, ones * 3, 1)
    assert time.monotonic() - start < 0.5
    np.testing.assert_allclose(first.grads, 1.0)  # its own 3 at weight 1, two unheard zeros at weight 1 each
    transports[1].send(0, "grad", 10, {"g": ones * 6}, {"w": 1.0})
    time.sleep(0.05)
    second = ex[0].exchange(11, ones * 3, 1)
    np.testing.assert_allclose(second.grads, (3 + 6 / 2) / (1 + 1 / 2 + 1))  # peer 1's round 10 at staleness 1
    transports[2].send(0, "grad", 11, {"g": ones * 9}, {"w": 1.0})
    transports[1].send(0, "grad", 11, {"g": ones * 6}, {"w": 1.0})
    time.sleep(0.05)
    third = ex[0].exchange(12, ones * 3, 1)  # from here on, the bound as usual: nothing unheard counts
    np.testing.assert_allclose(third.grads, (3 + 6 / 2 + 9 / 2) / (1 + 1 / 2 + 1 / 2))


@pytest.mark.parametrize("compute_s,fresh", [(0.3, True), (0.005, False)])
def test_with_staleness_a_gradient_about_to_arrive_is_waited_for_up_to_the_patience(transports, compute_s, fresh):
    params = DenseExchange.Params(deadline_s=2.0, staleness=2, patience=1.0)
    ex = DenseExchange(params, stage_context(transports, 0))
    for peer in (1, 2):
        threading.Timer(0.05, transports[peer].send, args=(0, "grad", 0, {"g": np.ones(4, np.float32)},
                                                          {"w": 1.0})).start()
    result = ex.exchange(0, np.zeros(4, np.float32), 1, compute_s)  # patience: 1 x the compute time
    assert result.received == (2 if fresh else 0)
    assert (0.04 <= result.wait_s < 0.25) if fresh else result.wait_s < 0.04
