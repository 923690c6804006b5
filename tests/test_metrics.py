"""Run summary from the peers' JSONL events."""
import json

from dlion.analysis import summarize
from dlion.metrics import EventLog, peer_log_path, read_events


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
