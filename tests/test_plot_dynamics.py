"""scripts/plot_dynamics.py: fair shares from the measured rates and the re-balancing time (fake events, no runs)."""
import importlib.util

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("plot_dynamics", ROOT / "scripts" / "plot_dynamics.py")
dyn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dyn)


def it(t, batch, rate, links=None):
    return {"ev": "iter", "t": t, "batch": batch, "rate": rate, "links": links or {}}


def test_shares_follow_every_peers_latest_rate_and_rebalance_is_measured_from_the_change():
    iters = {0: [it(101, 64, 600), it(131, 64, 120), it(133, 20, 120), it(136, 18, 100)],
             1: [it(101.1, 64, 600), it(131.1, 64, 600), it(133.1, 108, 600), it(136.1, 116, 700)]}
    rows = dyn.shares(iters, 100.0, 128)
    assert [r[0] for r in rows] == [31, 33, 36]  # at peer 0's events, once both peers have reported
    assert rows[0][1] == {0: 64, 1: 64}
    assert rows[0][2] == {0: pytest.approx(128 * 120 / 720), 1: pytest.approx(128 * 600 / 720)}
    assert dyn.rebalance_s(rows, 30.0, 0.15) == pytest.approx(6.0)  # at 33 s peer 1 still reports 64
    assert dyn.rebalance_s(rows, 30.0, 0.01) is None
    assert dyn.held(rows, 31.0, 0.15) == pytest.approx(1 / 3, abs=1e-3)


def test_link_series():
    iters = {0: [it(101, 64, 600, {"1": {"k": 5000, "bps": 1e8}}), it(102, 64, 600)]}
    assert dyn.link_series(iters, 100.0, 0, 1) == [(1, 5000, 1e8)]
