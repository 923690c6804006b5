"""The dlion preset in real peer processes: unequal emulated capacities, a capacity change mid-run.

Three peers under the in-process (fallback) emulation, so the test needs no root: 0.6 / 0.3 / 0.15 cores, and at
12 s peers 0 and 2 swap capacities. Weighted dynamic batching must split the global batch in proportion to the
measured rates within a bounded number of iterations, and follow the swap; the prioritized exchange must report
per-link budgets; every peer must finish.
"""
import json
import subprocess

import pytest
import yaml

from conftest import PYTHON, ROOT, free_ports, python_env
from dlion.metrics import peer_log_path, read_events

pytestmark = pytest.mark.integration

CHANGE_AT_S = 12.0


def shares(event: dict) -> dict[int, float]:
    alloc = {int(p): b for p, b in event["alloc"].items()}
    return {p: b / sum(alloc.values()) for p, b in alloc.items()}


def test_batch_sizes_follow_unequal_and_changing_capacities(tmp_path):
    ports = free_ports(3)
    cfg = {
        "name": "dlion-it", "seed": 2, "preset": "dlion",
        "peers": [{"id": i, "port": ports[i], "cores": c} for i, c in enumerate((0.6, 0.3, 0.15))],
        "emulation": {"method": "fallback"},
        "training": {"dataset": "synthetic", "model": "cnn", "global_batch": 96, "max_seconds": 24,
                     "stop_at_target": False},
        "strategies": {"batching": {"retune_every": 5}},
        "evaluation": {"every_iterations": 1000},
        "output": {"dir": str(tmp_path / "out"), "log_every": 5},
        "transport": {"startup_timeout_s": 60},
        "schedule": [{"at": f"{CHANGE_AT_S}s", "peer": 0, "cores": 0.15},
                     {"at": f"{CHANGE_AT_S}s", "peer": 2, "cores": 0.6}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([PYTHON, "-m", "dlion", "run", str(path)], cwd=ROOT, env=python_env(),
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["peers_finished"] == 3 and summary["emulation"] == "fallback"

    events = read_events(peer_log_path(out, 0))
    t0 = next(e["t"] for e in events if e["ev"] == "start")
    iters = [e for e in events if e["ev"] == "iter"]
    change = next(e for e in events if e["ev"] == "change")
    before = [e for e in iters if e["it"] >= 30 and e["t"] < change["t"]]
    after = [e for e in iters if e["t"] > change["t"] + 4.0]
    assert before and after, (len(iters), change)
    # within 30 iterations the split follows the capacities: 0.6 : 0.3 : 0.15 is 57% / 29% / 14%
    for e in before:
        s = shares(e)
        assert s[0] > 1.5 * s[1] and s[1] > 1.3 * s[2], e["alloc"]
    # and a few seconds after the swap it has turned around
    for e in after[-3:]:
        s = shares(e)
        assert s[2] > 1.5 * s[1] and s[1] > 1.3 * s[0], e["alloc"]
    assert all(sum(e["alloc"].values()) == 96 for e in iters)
    # every link's budget and estimate are reported; the exchange sent sparse or dense per link
    assert {d for e in iters for d in e["links"]} == {"1", "2"}
    assert change["t"] - t0 == pytest.approx(CHANGE_AT_S, abs=3.0)
