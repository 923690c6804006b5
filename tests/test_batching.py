"""Batching: the allocation math, and weighted dynamic batching across in-process peers (no TensorFlow)."""
import numpy as np
import pytest

from conftest import stage_context
from dlion.batching import FixedBatching, WeightedBatching, allocate, split_evenly

PEERS = (0, 1, 2, 3)


def test_split_evenly_sums_to_the_total_with_remainder_to_lowest_ids():
    assert split_evenly(10, [2, 0, 1]) == {0: 4, 1: 3, 2: 3}
    assert sum(split_evenly(97, range(5)).values()) == 97


def test_fixed_batching_gives_each_peer_its_share():
    transports = dict.fromkeys((0, 1, 2))
    sizes = [FixedBatching(FixedBatching.Params(), stage_context(transports, p)).batch_size(7) for p in (0, 1, 2)]
    assert sizes == [32, 32, 32]


@pytest.mark.parametrize("seed", range(50))
def test_allocation_sums_to_the_total_within_bounds_and_proportional(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    rates = {p: float(rng.uniform(0.05, 10)) for p in range(n)}
    total = int(rng.integers(n * 2, 600))
    low = int(rng.integers(1, total // n + 1))
    high = int(rng.integers(-(-total // n), total + 1))
    sizes = allocate(total, rates, low, high)
    assert sum(sizes.values()) == total
    assert all(low <= b <= high for b in sizes.values())
    # unpinned peers are within one sample of their proportional share of what the pinned ones left
    free = [p for p in sizes if low < sizes[p] < high]
    if free:
        left = total - sum(b for p, b in sizes.items() if p not in free)
        norm = sum(rates[p] for p in free)
        for p in free:
            assert abs(sizes[p] - left * rates[p] / norm) < 1 + 1e-9


def test_allocation_exact_cases():
    assert allocate(128, {0: 1.0, 1: 0.5, 2: 0.3, 3: 0.2}, 1, 128) == {0: 64, 1: 32, 2: 19, 3: 13}
    assert allocate(100, {0: 1000.0, 1: 1.0}, 10, 100) == {0: 90, 1: 10}   # the minimum holds
    assert allocate(100, {0: 1000.0, 1: 1.0, 2: 1.0}, 1, 60) == {0: 60, 1: 20, 2: 20}  # the maximum holds
    assert allocate(7, {0: 1.0, 1: 1.0, 2: 1.0}, 1, 7) == {0: 3, 1: 2, 2: 2}  # ties: lower id first
    assert allocate(6, {0: 0.0, 1: 0.0}, 1, 6) == {0: 3, 1: 3}  # no information: equal


def test_allocation_rejects_impossible_bounds():
    with pytest.raises(ValueError, match="cannot split"):
        allocate(10, {0: 1.0, 1: 1.0}, 6, 10)


def weighted(transports, global_batch=128, **params):
    cores = {0: 1.0, 1: 0.5, 2: 0.3, 3: 0.2}
    p = WeightedBatching.Params(**params)
    return {i: WeightedBatching(p, stage_context(transports, i, global_batch=global_batch, cores=cores))
            for i in PEERS}


def run(stages, speeds, iterations, start=0):
    """Lockstep iterations: each peer's step takes batch / speed seconds (simulated), then a barrier (the exchange).
    Returns the allocation each peer used at each iteration."""
    used = []
    for it in range(start, start + iterations):
        sizes = {p: stages[p].batch_size(it) for p in PEERS}
        used.append({p: dict(stages[p].sizes) for p in PEERS})
        for p in PEERS:
            stages[p].observe(it, sizes[p], sizes[p] / speeds[p])
        # reports of round `it` are delivered before the next iteration, like gradients in lockstep training
    return used


def test_starts_from_the_configured_cores_and_all_peers_agree(inproc):
    stages = weighted(inproc(PEERS))
    first = {p: stages[p].batch_size(0) for p in PEERS}
    assert first == {0: 64, 1: 32, 2: 19, 3: 13}


def barrier(transports):
    """Every peer's hello barrier at once (what `Peer.run` does before the first round)."""
    from conftest import in_threads
    return in_threads(lambda p: transports[p].wait_for_peers(5.0), list(transports))


def test_the_first_rounds_follow_the_rates_the_peers_expected_and_all_peers_agree(inproc):
    transports = inproc(PEERS)
    stages = weighted(transports)
    expected = {0: 4000.0, 1: 1800.0, 2: 600.0, 3: 400.0}  # per core, the small peers are slower
    for p in PEERS:
        stages[p].calibrate(expected[p])
    assert all(reachable == set(PEERS) - {p} for p, reachable in barrier(transports).items())
    first = {p: stages[p].batch_size(0) for p in PEERS}
    assert first == allocate(128, expected, 1, 128) == {0: 75, 1: 34, 2: 11, 3: 8}  # the cores': 64 / 32 / 19 / 13
    assert all(stages[p].sizes == first for p in PEERS)
    speeds = {0: 600.0, 1: 600.0, 2: 300.0, 3: 100.0}
    used = run(stages, speeds, 2)  # measured rates take over from the first reports on
    assert used[-1][0] == allocate(128, speeds, 1, 128)


def test_the_configured_cores_split_the_first_rounds_while_a_peer_announced_no_rate(inproc):
    transports = inproc(PEERS)
    stages = weighted(transports)
    for p in (0, 1, 2):  # peer 3 expects nothing (a simulated peer: no warm-up)
        stages[p].calibrate(1000.0)
    barrier(transports)
    assert {p: stages[p].batch_size(0) for p in PEERS} == {0: 64, 1: 32, 2: 19, 3: 13}


def test_batches_become_proportional_to_measured_rates_and_follow_a_change(inproc):
    stages = weighted(inproc(PEERS), retune_every=10)
    speeds = {0: 600.0, 1: 600.0, 2: 300.0, 3: 100.0}  # not what the cores say
    used = run(stages, speeds, 5)
    final = used[-1]
    assert all(final[p] == final[0] for p in PEERS)  # every peer computed the same allocation
    assert final[0] == allocate(128, speeds, 1, 128) == {0: 48, 1: 48, 2: 24, 3: 8}
    speeds = {0: 100.0, 1: 600.0, 2: 300.0, 3: 600.0}  # peer 0 slows down, peer 3 speeds up
    used = run(stages, speeds, 40, start=5)
    assert all(u[p] == u[0] for u in used for p in PEERS)
    # the moved rates trigger reports at once (threshold 25%), not at the next multiple of retune_every ...
    assert used[3][0][0] < 40 and used[3][0][3] > 20
    # ... and the smoothed rates bring the allocation to the new rates
    target = allocate(128, speeds, 1, 128)
    assert target == {0: 8, 1: 48, 2: 24, 3: 48}
    assert all(abs(used[-1][0][p] - target[p]) <= 1 for p in PEERS), used[-1][0]


def test_a_departed_peer_is_dropped_and_the_others_take_its_share(inproc):
    transports = inproc(PEERS)
    stages = weighted(transports)
    run(stages, {p: 300.0 for p in PEERS}, 3)
    transports[0].mailbox.mark_departed(3)
    sizes = allocate(128, {0: 1, 1: 1, 2: 1}, 1, 128)
    assert {p: stages[0].batch_size(3) for p in (0,)} == {0: sizes[0]} and sum(sizes.values()) == 128


def test_a_bad_report_is_dropped_at_the_door_and_the_last_good_ones_are_used(inproc):
    transports = inproc(PEERS)
    stages = weighted(transports)
    run(stages, {p: 300.0 for p in PEERS}, 3)
    transports[3].send(0, "report", 3, None, {"rate": -5.0})
    for _ in range(3):
        assert stages[0].batch_size(4) == 32  # equal measured rates
    assert transports[0].stats()[3].dropped == 1
