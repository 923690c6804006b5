"""Per-link prioritized exchange: exact top-k, residual conservation, budgets that follow the links' measured rates."""
import time

import numpy as np
import pytest

from conftest import in_threads, stage_context
from dlion.emulate.links import ShapedLinks
from dlion.compression import LinkResidual, top_k_indices
from dlion.exchange.prioritized import BITS_PER_HALF_ENTRY, PrioritizedExchange
from dlion.topology import Topology, TopologySpec
from dlion.transport import Sparse

PEERS = (0, 1, 2)
FULL = Topology(TopologySpec("full"), PEERS)


@pytest.mark.parametrize("n,k", [(10, 3), (1000, 1), (100_000, 50), (100_000, 2000), (225_034, 30_000),
                                 (5000, 4999), (5000, 5000)])
def test_top_k_is_exact(n, k):
    mags = np.abs(np.random.default_rng(n + k).standard_normal(n).astype(np.float32))
    expected = np.sort(np.argsort(-mags, kind="stable")[:k])
    got = top_k_indices(mags, k)
    assert got.dtype == np.uint32 and np.array_equal(got, expected)


def test_top_k_when_the_sample_misses_the_large_entries():
    mags = np.zeros(10_000, np.float32)
    where = np.arange(1, 10_000, 64)
    mags[where] = np.arange(1, where.size + 1)  # the stride sample sees only zeros
    assert np.array_equal(top_k_indices(mags, 100), where[-100:].astype(np.uint32))


@pytest.mark.parametrize("k", [0, 3, 5, 40])
def test_top_k_among_equal_entries_takes_the_first(k):
    mags = np.zeros(1000, np.float32)
    mags[[10, 500, 900]] = 2.0
    mags[[20, 30]] = 1.0  # a sparse residual: the rest are ties at zero
    expected = np.sort(np.argsort(-mags, kind="stable")[:k]).astype(np.uint32)
    assert np.array_equal(top_k_indices(mags, k), expected)


@pytest.mark.parametrize("k", [1, 7, 40, 60])
def test_sent_plus_residual_is_exactly_what_went_in_over_any_number_of_rounds(k):
    rng = np.random.default_rng(k)
    link = LinkResidual(100)
    total_in = np.zeros(100, np.float64)
    total_sent = np.zeros(100, np.float64)
    for _ in range(200):
        g = rng.integers(-1000, 1000, 100).astype(np.float32)  # integers: float32 sums are exact
        total_in += g
        sent = link.take(g, k)
        if isinstance(sent, Sparse):
            assert len(sent.indices) == k and np.all(np.diff(sent.indices.astype(np.int64)) > 0)
            np.add.at(total_sent, sent.indices, sent.values)
        else:  # 2k >= n: the whole vector, densely
            assert 2 * k >= 100
            total_sent += sent
        np.testing.assert_array_equal(total_sent + link.residual, total_in)


@pytest.mark.parametrize("k", [5, 60])
def test_in_half_precision_sent_plus_residual_is_exactly_what_went_in(k):
    rng = np.random.default_rng(k)
    link = LinkResidual(100)
    for _ in range(50):
        g = (rng.standard_normal(100) * 10.0 ** rng.integers(-9, 3, 100)).astype(np.float32)
        went_in = link.residual + g
        sent = link.take(g, k, half=True)
        values = sent.values if isinstance(sent, Sparse) else sent
        assert values.dtype == np.float16
        back = np.zeros(100, np.float32)
        back[sent.indices if isinstance(sent, Sparse) else slice(None)] = values
        np.testing.assert_array_equal(back + link.residual, went_in)  # rounding's remainder stays, exactly
    assert np.abs(link.residual).max() > 0  # the rounding did leave something behind


def test_a_value_beyond_float16_goes_as_float32():
    link = LinkResidual(4)
    sent = link.take(np.array([1e6, 1.0, 0.5, 0.0], np.float32), 4, half=True)
    assert sent.dtype == np.float32 and np.array_equal(sent, [1e6, 1.0, 0.5, 0.0])
    assert not link.residual.any()


def test_receivers_combine_float16_gradients(inproc):
    transports = inproc(PEERS)
    ex = exchanges(transports, configured_bps=1e9, time_budget_s=1.0)  # dense: the whole vector every round
    grads = {p: np.full(1000, 0.1 * (p + 1), np.float32) for p in PEERS}
    results = run_round(ex, 0, grads, {p: 1 for p in PEERS})
    for p in PEERS:  # 0.1, 0.2 and 0.3 are not float16 numbers: each neighbour's is off by its rounding, at most
        np.testing.assert_allclose(results[p].grads, np.full(1000, 0.2, np.float32), rtol=2 ** -11)
        assert results[p].received == 2


def exchanges(transports, configured_bps, graph=FULL, **params):
    p = PrioritizedExchange.Params(**params)
    return {i: PrioritizedExchange(p, stage_context(transports, i, graph,
                                                    link_bandwidths={q: configured_bps for q in PEERS if q != i}))
            for i in PEERS}


def run_round(ex, round_, grads, weights):
    return in_threads(lambda p: ex[p].exchange(round_, grads[p], weights[p], 0.05), PEERS)


def test_a_link_budget_follows_the_measured_rate_of_the_link(inproc):
    transports = inproc(PEERS)
    transports[0].link_policy = ShapedLinks()
    transports[0].link_policy.set(1, bandwidth_bps=8e6)  # the only slow link: 0 -> 1
    ex = exchanges(transports, configured_bps=80e6, time_budget_s=0.05, deadline_s=5.0, min_entries=100)
    rng = np.random.default_rng(0)
    n = 200_000
    grads = {p: rng.standard_normal(n).astype(np.float32) for p in PEERS}
    for p in PEERS:  # a small message on every link first: the receivers learn its base delay
        for q in PEERS:
            if q != p:
                transports[p].send(q, "probe", 0)
    budgets = [run_round(ex, r, grads, {p: 1 for p in PEERS})[0].budgets for r in range(8)]
    configured_k = int(80e6 * 0.05 / BITS_PER_HALF_ENTRY)  # 83,333 entries (float16 values)
    assert budgets[0][1]["k"] == configured_k and budgets[0][2]["k"] == configured_k
    # the receiver measured the slow link and told the sender: its budget is now the link's real capacity
    assert budgets[-1][1]["k"] == pytest.approx(int(8e6 * 0.05 / BITS_PER_HALF_ENTRY), rel=0.2)
    assert budgets[-1][1]["bps"] == pytest.approx(8e6, rel=0.2)
    assert budgets[-1][2]["k"] > 5 * budgets[-1][1]["k"]  # the fast link keeps a large budget


def test_receivers_combine_sparse_gradients_with_batch_weights(inproc):
    transports = inproc(PEERS)
    ex = exchanges(transports, configured_bps=1e9, time_budget_s=64 * 2 / 1e9, min_entries=2)  # k = 2 of 8
    grads = {0: np.array([8, 0, 0, 0, 0, 0, 0, 1], np.float32),
             1: np.array([0, 4, 0, 0, 0, 0, -6, 0], np.float32),
             2: np.zeros(8, np.float32)}
    weights = {0: 1, 1: 3, 2: 4}
    results = run_round(ex, 0, grads, weights)
    # peer 2 got the top 2 of each: [8, ., ., ., ., ., ., 1] -> 8 and 1; [0, 4, ..., -6, 0] -> 4 and -6
    np.testing.assert_allclose(results[2].grads, np.array([8, 12, 0, 0, 0, 0, -18, 1], np.float32) / 8)
    assert results[2].received == 2
    # what did not fit stays in the link's residual: peer 0 -> 1 sent 8 and 1; nothing left
    assert not ex[0].residuals[1].residual.any()


def test_a_sparse_gradient_with_unsorted_indices_is_dropped_and_counted(inproc):
    transports = inproc(PEERS)
    ex = exchanges(transports, configured_bps=1e9)
    bad = Sparse(np.array([5, 2], np.uint32), np.array([1, 1], np.float32), 8)
    transports[1].send(0, "grad", 0, {"g": bad}, {"w": 1.0})
    transports[2].send(0, "grad", 0, {"g": np.ones(8, np.float32)}, {"w": 1.0})
    result = ex[0].exchange(0, np.zeros(8, np.float32), 1.0, 0.01)
    assert result.received == 1 and transports[0].stats()[1].dropped == 1
    np.testing.assert_allclose(result.grads, 0.5)


def test_on_a_time_varying_graph_each_link_carries_its_residual_to_its_next_round(inproc):
    transports = inproc(PEERS)
    graph = Topology(TopologySpec("one-peer-exponential"), PEERS)  # round 0: p -> p + 1, round 1: p -> p + 2
    ex = exchanges(transports, configured_bps=1e9, graph=graph, time_budget_s=64 * 1 / 1e9, min_entries=1)  # k = 1
    grads = {p: np.array([0, 0, 0, 0, 0, 0, 0, 0], np.float32) for p in PEERS}
    grads[0] = np.array([5, 0, 0, 3, 0, 0, 0, 0], np.float32)
    r0 = run_round(ex, 0, grads, {p: 1 for p in PEERS})
    assert r0[0].budgets.keys() == {1} and r0[1].received == 1 and r0[2].received == 1  # 0 -> 1 only; 1 -> 2
    np.testing.assert_allclose(r0[1].grads, [2.5, 0, 0, 0, 0, 0, 0, 0])  # the top entry of 0 -> 1
    zeros = {p: np.zeros(8, np.float32) for p in PEERS}
    r1 = run_round(ex, 1, zeros, {p: 1 for p in PEERS})
    assert r1[0].budgets.keys() == {2}  # link 0 -> 2 starts its own residual: 0's gradient of round 0 is not in it
    np.testing.assert_allclose(r1[2].grads, 0)
    r2 = run_round(ex, 2, zeros, {p: 1 for p in PEERS})
    np.testing.assert_allclose(r2[1].grads, [0, 0, 0, 1.5, 0, 0, 0, 0])  # 0 -> 1's residual, sent in its next round


def test_a_link_too_slow_for_min_entries_every_round_sends_them_every_few_rounds(inproc):
    transports = inproc(PEERS)
    # 64 bit/s for 1 s a round: one entry of credit per round (float32 values), 4 entries at least per message
    ex = exchanges(transports, configured_bps=64, time_budget_s=1.0, min_entries=4, deadline_s=1.0,
                   half_precision=False)
    rng = np.random.default_rng(3)
    total_in = np.zeros(100, np.float64)
    sent_k = []
    for r in range(12):
        g = rng.integers(-100, 100, 100).astype(np.float32)
        total_in += g
        results = run_round(ex, r, {p: g if p == 0 else np.zeros(100, np.float32) for p in PEERS},
                            {p: 1 for p in PEERS})
        sent_k.append(results[0].budgets[1]["k"])
    assert sent_k == [0, 0, 0, 4] * 3  # the credit reaches 4 entries every fourth round
    assert ex[0].credits[1] == 0.0  # all the credit went into the last message


def test_under_overlap_every_entry_sent_is_collected_once_and_the_rest_stays_in_the_residual(inproc):
    transports = inproc(PEERS)
    ex = exchanges(transports, configured_bps=64, time_budget_s=10.0, min_entries=4, deadline_s=1.0, staleness=2)
    rng = np.random.default_rng(5)
    total_in = np.zeros(100, np.float64)
    received = np.zeros(100, np.float64)
    for r in range(30):  # peer 1 collects only every third round, so messages wait in its mailbox
        g = rng.integers(-100, 100, 100).astype(np.float32)
        total_in += g
        ex[0].exchange(r, g, 1, 0.01)
        if r % 3 == 2:
            for msg in transports[1].mailbox.collect("grad", r, [], time.monotonic()).get(0, []):
                np.add.at(received, msg.tensors["g"].indices, msg.tensors["g"].values)
    for msg in transports[1].mailbox.collect("grad", 10**6, [], time.monotonic()).get(0, []):
        np.add.at(received, msg.tensors["g"].indices, msg.tensors["g"].values)
    np.testing.assert_array_equal(received + ex[0].residuals[1].residual, total_in)
