"""Gaia's significance filter: only entries large against their parameter go, the threshold decays, nothing is lost."""
import numpy as np
import pytest

from exchange_helpers import PEERS, exchanges, record_grads, run_round
from dlion.exchange.gaia import GaiaExchange
from dlion.stages import ModelAccess
from dlion.transport import Sparse


def model_of(params):
    return ModelAccess(get=lambda: params.copy(), set=None, score=None)


def assert_sparse(g, n):
    assert isinstance(g, Sparse) and g.size == n and g.indices.dtype == np.uint32 and g.values.dtype == np.float32
    assert np.all(np.diff(g.indices.astype(np.int64)) > 0)


def test_only_significant_entries_go_and_the_threshold_decays(inproc, monkeypatch):
    transports = inproc(PEERS)
    # trainable parameters first, then two non-trainable ones the gradient does not cover
    params = np.array([1, 1, 1, 1, 2, 2, 0, 0, 9, 9], np.float32)
    ex = exchanges(GaiaExchange, transports, models={p: model_of(params) for p in PEERS}, threshold=0.01,
                   decay_rounds=1.0)
    assert [ex[0].threshold_at(t) for t in range(4)] == pytest.approx([0.01, 0.01 / 2 ** 0.5, 0.01 / 3 ** 0.5, 0.005])
    sent = record_grads(monkeypatch, transports[0])
    grads = np.array([0.02, 0.007, -0.011, 0.009, 0.015, 0.03, 0.001, 0], np.float32)
    zeros = {p: np.zeros(8, np.float32) for p in PEERS}
    for t in range(4):
        run_round(ex, t, {**zeros, 0: grads if t == 0 else zeros[0]}, dict.fromkeys(PEERS, 1))
    by_round = {}
    for dst, round_, g in sent:
        assert_sparse(g, 8)
        by_round.setdefault(round_, {})[dst] = g
    for t, expected in enumerate([[0, 2, 5, 6],  # above 1% of |parameter|; any change of a zero parameter
                                  [3, 4],        # 0.009 and 0.015 / 2 pass 0.71%
                                  [1],           # 0.007 passes 0.58%
                                  []]):
        for dst in (1, 2):  # each link by its own accumulation: here the same
            assert by_round[t][dst].indices.tolist() == expected
            np.testing.assert_array_equal(by_round[t][dst].values, grads[expected])
    assert not ex[0].residuals[1].residual.any() and not ex[0].residuals[2].residual.any()


def test_what_is_not_sent_stays_accumulated_and_goes_later_exactly(inproc, monkeypatch):
    transports = inproc(PEERS)
    rng = np.random.default_rng(7)
    params = rng.integers(1, 50, 200).astype(np.float32)
    ex = exchanges(GaiaExchange, transports, models={p: model_of(params) for p in PEERS}, threshold=2.0,
                   decay_rounds=5.0)
    sent = record_grads(monkeypatch, transports[0])
    total_in = np.zeros(200, np.float64)
    total_sent = {1: np.zeros(200, np.float64), 2: np.zeros(200, np.float64)}
    zeros = np.zeros(200, np.float32)
    kept = 0
    for t in range(25):
        g = rng.integers(-20, 20, 200).astype(np.float32)  # integers: float32 sums are exact
        total_in += g
        run_round(ex, t, {0: g, 1: zeros, 2: zeros}, dict.fromkeys(PEERS, 1))
        for dst, round_, msg in sent:
            assert_sparse(msg, 200)
            np.add.at(total_sent[dst], msg.indices, msg.values)
        sent.clear()
        for dst in (1, 2):
            np.testing.assert_array_equal(total_sent[dst] + ex[0].residuals[dst].residual, total_in)
        kept += np.count_nonzero(ex[0].residuals[1].residual)
    assert kept and np.count_nonzero(total_sent[1]) > 100  # entries were held back, and went later


def test_without_a_model_significance_is_against_the_accumulations_rms_and_receivers_take_the_weighted_mean(inproc):
    transports = inproc(PEERS)
    ex = exchanges(GaiaExchange, transports, threshold=0.5)
    grads = {0: np.array([8, 0, 0, 0, 0, 0, 0, 1], np.float32),   # RMS 2.85: only 8 passes 1.43
             1: np.array([0, 4, 0, 0, 0, 0, -6, 0], np.float32),  # RMS 2.55: 4 and -6 pass 1.27
             2: np.zeros(8, np.float32)}
    results = run_round(ex, 0, grads, {0: 1, 1: 3, 2: 4})
    np.testing.assert_allclose(results[2].grads, np.array([8, 12, 0, 0, 0, 0, -18, 0], np.float32) / 8)
    np.testing.assert_allclose(results[0].grads, np.array([8, 12, 0, 0, 0, 0, -18, 1], np.float32) / 8)
    assert results[2].received == 2 and results[0].budgets == {1: {"k": 1}, 2: {"k": 1}}
    np.testing.assert_array_equal(ex[0].residuals[1].residual, [0, 0, 0, 0, 0, 0, 0, 1])
