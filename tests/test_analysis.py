"""dlion.analysis on eval events and fake run directories: accuracy curves, values at equal time, aggregation over
repeats."""
import json

import pytest

from dlion.analysis import (accuracy_curve, aggregate, equal_time, load_run, mean_curve, time_to_target,
                            value_at)

T0 = 1_700_000_000.0
PEER = {"iterations": 100, "samples_per_s": 50.0, "bytes_by_kind": {"grad": 2000, "model": 100}}


def fake_run(path, evals, ttt=None, final=0.8, worst=0.78, peers=None, bytes_total=1000):
    """A run directory as `dlion run` leaves it; evals are (peer, seconds after training start, accuracy)."""
    peers = peers or {0: PEER, 1: PEER}
    path.mkdir(parents=True, exist_ok=True)
    for pid in peers:
        events = [{"ev": "start", "peer": pid, "t": T0 + 0.5 * pid}]
        events += [{"ev": "eval", "peer": p, "t": T0 + s, "it": 0, "acc": a, "mean_acc": a} for p, s, a in evals
                   if p == pid]
        (path / f"peer-{pid}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    summary = {"time_to_target_s": ttt, "final_accuracy": final, "worst_final_accuracy": worst,
               "bytes_sent_total": bytes_total, "target_accuracy": 0.85, "peers": {str(p): v for p, v in peers.items()}}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def evals_until(end, acc=0.8):
    """Both peers evaluating every 10 s up to `end` at a constant accuracy."""
    return [(p, s, acc) for s in range(10, end + 1, 10) for p in (0, 1)]


def test_time_to_target_needs_every_peer_and_uses_the_completing_event():
    evals = [{"peer": 0, "t": 10.0, "acc": 0.9}, {"peer": 1, "t": 11.0, "acc": 0.7},
             {"peer": 1, "t": 15.0, "acc": 0.85}, {"peer": 0, "t": 16.0, "acc": 0.95}]
    assert time_to_target(evals, [0, 1], 0.85, t0=5.0) == 10.0   # mean 0.875 at t = 15
    assert time_to_target(evals, [0, 1], 0.99, t0=5.0) is None
    assert time_to_target(evals, [0, 1, 2], 0.5, t0=5.0) is None  # peer 2 never reported
    assert time_to_target(evals, [0, 1], None, t0=5.0) is None


def test_with_overlapped_rounds_the_target_is_read_from_the_latest_figures_as_the_stop_rule_does():
    """Peer 0 is a round ahead: when peer 1 reports round 2 (0.9), peer 0's latest figure is round 3's (0.6), so the
    latest figures never average 0.8, though round 2's did: the models in existence never scored it together, and
    the stop rule (`dlion.control`) would not have stopped there either. A later rise of both counts."""
    e = lambda peer, it, t, acc: {"peer": peer, "it": it, "t": t, "acc": acc, "train_s": t - 100.0}
    evals = [e(0, 1, 101.0, 0.5), e(0, 2, 102.0, 0.8), e(1, 1, 102.5, 0.5), e(0, 3, 103.0, 0.6),
             e(1, 2, 104.0, 0.9), e(0, 4, 105.0, 0.6), e(1, 3, 106.0, 0.6)]
    assert time_to_target(evals, [0, 1], 0.8, t0=100.0) is None
    assert time_to_target(evals + [e(0, 5, 107.0, 0.85), e(1, 4, 108.0, 0.8)], [0, 1], 0.8, t0=100.0) == 8.0


def test_time_to_target_counts_training_time_without_evaluation_pauses():
    evals = [{"peer": 0, "t": 110.0, "acc": 0.5, "train_s": 8.0}, {"peer": 1, "t": 110.5, "acc": 0.7, "train_s": 8.1},
             {"peer": 0, "t": 130.0, "acc": 0.9, "train_s": 20.0}, {"peer": 1, "t": 130.2, "acc": 0.9, "train_s": 20.1}]
    assert accuracy_curve(evals, [0, 1], t0=100.0) == [(8.1, pytest.approx(0.6)), (20.0, pytest.approx(0.8)),
                                                                (20.1, pytest.approx(0.9))]
    assert time_to_target(evals, [0, 1], 0.75, t0=100.0) == 20.0
    assert time_to_target(evals, [0, 1], 0.95, t0=100.0) is None


def test_accuracy_curve_waits_for_every_peer_and_is_stepwise(tmp_path):
    run = load_run(fake_run(tmp_path, [(0, 5, 0.6), (1, 6, 0.7), (0, 10, 0.8)]))
    assert run["curve"] == [(6.0, pytest.approx(0.65)), (10.0, pytest.approx(0.75))]  # from the first peer's start
    assert value_at(run["curve"], 5.9) is None
    assert value_at(run["curve"], 9.9) == pytest.approx(0.65)
    assert value_at(run["curve"], 99) == pytest.approx(0.75)


def test_time_to_target_is_the_median_of_those_reached_and_null_below_half(tmp_path):
    def figures(name, ttts):
        runs = [load_run(fake_run(tmp_path / f"{name}{i}", evals_until(20), ttt=t)) for i, t in enumerate(ttts)]
        return aggregate(runs, t_equal=None)

    three = figures("a", [10.0, None, 20.0])
    assert three["time_to_target_s"] == 15.0 and three["reached_target"] == 2 and three["repeats"] == 3
    assert figures("b", [12.0, None])["time_to_target_s"] == 12.0  # half reached
    one = figures("c", [10.0, None, None])
    assert one["time_to_target_s"] is None and one["reached_target"] == 1
    assert three["accuracy_at_equal_time"] is None and aggregate([], None, failed=3)["failed"] == 3


def test_means_worst_and_bytes_per_iteration(tmp_path):
    busy = {"iterations": 100, "samples_per_s": 30.0, "bytes_by_kind": {"grad": 6000, "model": 300}}
    untagged = {"iterations": 200, "samples_per_s": 10.0}  # a summary without per-kind counts
    runs = [load_run(fake_run(tmp_path / "1", evals_until(20), final=0.8, worst=0.75, bytes_total=1000,
                              peers={0: PEER, 1: busy})),
            load_run(fake_run(tmp_path / "2", evals_until(20), final=0.9, worst=0.7, bytes_total=3000,
                              peers={0: PEER, 1: untagged}))]
    f = aggregate(runs, t_equal=None)
    assert f["final_accuracy"] == 0.85 and f["worst_final_accuracy"] == 0.7 and f["bytes_total"] == 2000
    assert f["samples_per_s"] == (80 + 60) / 2
    # run 1: (2000 + 6000) / 200 iterations = 40; run 2: 2000 / 300 = 6.67 (the untagged peer counts 0)
    assert f["grad_bytes_per_iter"] == round((40 + 2000 / 300) / 2, 1)
    assert f["model_bytes_per_iter"] == round((400 / 200 + 100 / 300) / 2, 1)
    assert f["runs_without_bytes_by_kind"] == 1


def test_accuracy_at_the_latest_time_every_run_reached(tmp_path):
    long = load_run(fake_run(tmp_path / "long", [(0, 10, 0.5), (1, 10, 0.7), (0, 20, 0.8), (1, 30, 0.9)]))
    short = load_run(fake_run(tmp_path / "short", [(0, 15, 0.82), (1, 15, 0.84), (0, 25, 0.9), (1, 25, 0.9)]))
    other = load_run(fake_run(tmp_path / "other", evals_until(40, acc=0.7)))
    t_equal = equal_time([long["curve"], short["curve"], other["curve"]])
    assert t_equal == 25.0
    f = aggregate([long, short], t_equal)
    assert f["accuracy_at_equal_time"] == pytest.approx((0.75 + 0.9) / 2) and f["equal_time_s"] == 25.0
    assert equal_time([long["curve"], []]) is None
    grid, mean = mean_curve([long["curve"], short["curve"]])  # where both have values: 15..25 s
    assert grid == [15.0, 20.0, 25.0] and mean == pytest.approx([(0.6 + 0.83) / 2, (0.75 + 0.83) / 2, (0.75 + 0.9) / 2])
