"""Run summary from the peers' JSONL events."""
import json

import pytest

from dlion.metrics import EventLog, accuracy_curve, peer_log_path, read_events, summarize, time_to_target


def test_time_to_target_needs_every_peer_and_uses_the_completing_event():
    evals = [{"peer": 0, "t": 10.0, "acc": 0.9}, {"peer": 1, "t": 11.0, "acc": 0.7},
             {"peer": 1, "t": 15.0, "acc": 0.85}, {"peer": 0, "t": 16.0, "acc": 0.95}]
    assert time_to_target(evals, [0, 1], 0.85, t0=5.0) == 10.0   # mean 0.875 at t = 15
    assert time_to_target(evals, [0, 1], 0.99, t0=5.0) is None
    assert time_to_target(evals, [0, 1, 2], 0.5, t0=5.0) is None  # peer 2 never reported
    assert time_to_target(evals, [0, 1], None, t0=5.0) is None


def test_summarize_counts_unfinished_peers_and_ignores_torn_lines(tmp_path):
    for pid in (0, 1):
        log = EventLog(peer_log_path(tmp_path, pid), pid)
        log.emit("start")
        log.emit("iter", it=10, samples=320, samples_per_s=100.0, bytes_sent=1000, bytes_received=900,
                 messages_dropped=0)
        log.emit("eval", it=10, acc=0.8)
        if pid == 0:
            log.emit("final", it=12, samples=384, samples_per_s=110.0, acc=0.82, bytes_sent=1200,
                     bytes_received=1100, messages_dropped=1, stop_reason="max_iterations")
        log.close()
    with open(peer_log_path(tmp_path, 1), "a") as f:
        f.write('{"ev": "iter", "torn')  # a peer killed mid-write
    assert len(read_events(peer_log_path(tmp_path, 1))) == 3
    s = summarize(tmp_path, [0, 1], 0.8, wall_s=3.21)
    assert s["peers_finished"] == 1 and s["final_accuracy"] == 0.82 and s["worst_final_accuracy"] == 0.82
    assert s["peers"]["1"]["stop_reason"] == "died" and s["peers"]["1"]["iterations"] == 10
    assert s["bytes_sent_total"] == 2200 and s["time_to_target_s"] is not None and s["wall_s"] == 3.21
    json.dumps(s)


def test_time_to_target_counts_training_time_without_evaluation_pauses():
    evals = [{"peer": 0, "t": 110.0, "acc": 0.5, "train_s": 8.0}, {"peer": 1, "t": 110.5, "acc": 0.7, "train_s": 8.1},
             {"peer": 0, "t": 130.0, "acc": 0.9, "train_s": 20.0}, {"peer": 1, "t": 130.2, "acc": 0.9, "train_s": 20.1}]
    assert accuracy_curve(evals, [0, 1], t0=100.0) == [(8.1, pytest.approx(0.6)), (20.0, pytest.approx(0.8)),
                                                                (20.1, pytest.approx(0.9))]
    assert time_to_target(evals, [0, 1], 0.75, t0=100.0) == 20.0
    assert time_to_target(evals, [0, 1], 0.95, t0=100.0) is None
