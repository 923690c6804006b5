"""Ako's partial gradient exchange: partition t mod p each round, every entry every p rounds, exactly."""
import numpy as np

from exchange_helpers import PEERS, exchanges, record_grads, run_round
from dlion.exchange.ako import AkoExchange
from dlion.topology import Topology, TopologySpec
from dlion.transport import Sparse

BOUNDS = [0, 2, 5, 7, 10]  # 10 entries in 4 contiguous partitions


def test_round_t_sends_partition_t_mod_p_and_every_entry_every_p_rounds_exactly(inproc, monkeypatch):
    transports = inproc(PEERS)
    ex = exchanges(AkoExchange, transports, partitions=4)
    sent = record_grads(monkeypatch, transports[0])
    rng = np.random.default_rng(11)
    pending = np.zeros(10, np.float64)  # what peer 0 was given since each entry last left
    zeros = np.zeros(10, np.float32)
    for t in range(12):
        g = rng.integers(-100, 100, 10).astype(np.float32)  # integers: float32 sums are exact
        pending += g
        results = run_round(ex, t, {0: g, 1: zeros, 2: zeros}, dict.fromkeys(PEERS, 1))
        part = np.arange(BOUNDS[t % 4], BOUNDS[t % 4 + 1])
        assert sorted(dst for dst, _, _ in sent) == [1, 2]
        assert results[0].budgets == {1: {"k": part.size}, 2: {"k": part.size}}
        for dst, round_, msg in sent:
            assert round_ == t and isinstance(msg, Sparse) and msg.indices.dtype == np.uint32
            assert msg.indices.tolist() == part.tolist()
            np.testing.assert_array_equal(msg.values, pending[part])
        pending[part] = 0
        for dst in (1, 2):  # the rest stays accumulated on each link
            np.testing.assert_array_equal(ex[0].residuals[dst].residual, pending)
        sent.clear()


def test_on_a_time_varying_graph_each_link_goes_through_every_partition(inproc, monkeypatch):
    transports = inproc(PEERS)
    graph = Topology(TopologySpec("one-peer-exponential"), PEERS)  # even rounds: p -> p + 1, odd: p -> p + 2
    ex = exchanges(AkoExchange, transports, graph=graph, partitions=2)
    sent = record_grads(monkeypatch, transports[0])
    grads = {p: np.arange(1, 9, dtype=np.float32) for p in PEERS}
    for t in range(6):
        run_round(ex, t, grads, dict.fromkeys(PEERS, 1))
    to_1 = [(round_, msg.indices.tolist()) for dst, round_, msg in sent if dst == 1]
    assert to_1 == [(0, [0, 1, 2, 3]), (2, [4, 5, 6, 7]), (4, [0, 1, 2, 3])]  # not partition t mod 2 = 0 forever
    np.testing.assert_array_equal(sent[-1][2].values, 2 * grads[0][:4])  # rounds 2 and 4 of link 0 -> 1


def test_receivers_combine_partitions_with_batch_weights(inproc):
    transports = inproc(PEERS)
    ex = exchanges(AkoExchange, transports, partitions=2)
    grads = {0: np.arange(1, 9, dtype=np.float32), 1: -np.arange(1, 9, dtype=np.float32), 2: np.ones(8, np.float32)}
    weights = {0: 1, 1: 3, 2: 4}
    r0 = run_round(ex, 0, grads, weights)
    first = np.array([1 - 3 + 4, 2 - 6 + 4, 3 - 9 + 4, 4 - 12 + 4, 4, 4, 4, 4], np.float32) / 8
    np.testing.assert_allclose(r0[2].grads, first)  # the neighbours' first halves; their second halves count as 0
    assert r0[2].received == 2
    zeros = {p: np.zeros(8, np.float32) for p in PEERS}
    r1 = run_round(ex, 1, zeros, weights)
    np.testing.assert_allclose(r1[2].grads, np.array([0, 0, 0, 0, 5 - 15, 6 - 18, 7 - 21, 8 - 24], np.float32) / 8)
