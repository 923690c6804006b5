"""Gossip presets in real peer processes on loopback: Sparse-Push on a time-varying directed graph trains the peers to
one model with a fraction of dense gossip's bytes, and a peer killed mid-run costs the others at most a deadline."""
import json
import subprocess

import pytest
import yaml

from conftest import ROOT, free_ports, python_env, requires_fashion
from dlion.metrics import read_events
from test_integration import _live_peer_processes, dlion_cmd, run_and_kill_peer_2

pytestmark = [pytest.mark.integration, requires_fashion]

GOSSIP_DEADLINE_S = 2.0


def write_config(tmp_path, preset, n_peers, **training):
    ports = free_ports(n_peers)
    cfg = {
        "name": "gossip-it", "seed": 5, "preset": preset,
        "peers": [{"id": i, "port": ports[i], "cores": 0.5} for i in range(n_peers)],
        "training": {"model": "mlp", "global_batch": 128, "learning_rate": 0.002, "max_seconds": 90, **training},
        "strategies": {"gossip": {"deadline_s": GOSSIP_DEADLINE_S}},
        "evaluation": {"every_iterations": 100},
        "output": {"dir": str(tmp_path / "out"), "log_every": 5},  # odd and even rounds: both out-neighbours
        "transport": {"startup_timeout_s": 60},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(path):
    return subprocess.run(dlion_cmd("run", str(path)), cwd=ROOT, env=python_env(), capture_output=True, text=True,
                          timeout=240)


def test_sparse_push_trains_every_peer_to_one_model_with_few_model_bytes(tmp_path):
    iterations = 400
    result = run(write_config(tmp_path, "sparse-push", 4, max_iterations=iterations, stop_at_target=False))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["peers_finished"] == 4
    accs = [p["final_accuracy"] for p in summary["peers"].values()]
    assert min(accs) > 0.75 and max(accs) - min(accs) < 0.03, accs  # gossip kept the four models together
    start = next(e for e in read_events(out / "peer-0.jsonl") if e["ev"] == "start")
    dense_model_bytes = 4 * start["num_params"]
    for pid in range(4):
        events = read_events(out / f"peer-{pid}.jsonl")
        final = next(e for e in events if e["ev"] == "final")
        kinds = final["bytes_by_kind"]
        assert "grad" not in kinds and final["messages_dropped"] == 0
        # one message per round on a one-peer graph; dense push-sum would send the whole model in each
        assert kinds["gossip"] < iterations * dense_model_bytes / 20, kinds
        iters = [e for e in events if e["ev"] == "iter"]
        assert all(e["gossip"]["w"] > 0 and len(e["gossip"]["sent"]) == 1 for e in iters)
        assert {d for e in iters for d in e["gossip"]["sent"]} == {str((pid + 1) % 4), str((pid + 2) % 4)}


def test_a_killed_peer_costs_the_gossiping_others_at_most_a_deadline_per_round(tmp_path):
    path = write_config(tmp_path, "sgp", 3, max_iterations=200)
    out = tmp_path / "out"
    output = run_and_kill_peer_2(path, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["peers"]["2"]["stop_reason"] == "died"
    for pid in ("0", "1"):
        peer = summary["peers"][pid]
        assert peer["finished"] and peer["iterations"] == 200, output
        waits = [e["max_wait_s"] for e in read_events(out / f"peer-{pid}.jsonl") if e["ev"] == "iter"]
        assert max(waits) <= GOSSIP_DEADLINE_S + 0.5, waits
    assert summary["final_accuracy"] > 0.7
    assert not _live_peer_processes(out)
