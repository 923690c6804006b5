"""scripts/anchor_mwms.py: the settings it derives from a config, its summary, and one real run of MWMS workers."""
import dataclasses
import importlib.util
import json
import subprocess

import numpy as np
import pytest

from conftest import PYTHON, ROOT, free_ports, python_env, requires_fashion
from dlion import config as configmod
from dlion import data as datamod
from dlion import wiring
from dlion.analysis import aggregate, load_run
from dlion.config import Emulation
from dlion.metrics import read_events

_spec = importlib.util.spec_from_file_location("anchor_mwms", ROOT / "scripts" / "anchor_mwms.py")
anchor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(anchor)

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SYNTHETIC = ["training.dataset=synthetic"]


def test_each_worker_gets_an_equal_share_of_the_global_batch():
    cfg = configmod.load(QUICKSTART)
    assert anchor.worker_batch(cfg) == 32
    uneven = configmod.load(QUICKSTART, ["training.global_batch=100"])
    assert anchor.worker_batch(uneven) == 33
    figures = anchor.settings(uneven)
    assert (figures["workers"], figures["global_batch"], figures["configured_global_batch"]) == (3, 99, 100)
    assert figures["tf_threads"] == {"0": 1, "1": 1, "2": 1}  # ceil(0.66 cores), as the peers'


def test_tf_config_lists_every_peer_and_ranks_workers_by_peer_id():
    cfg = configmod.load(QUICKSTART, ["peers.0.id=7", "peers.0.address=10.77.0.8"])  # ids 7, 1, 2
    config = anchor.tf_config(cfg, 7)
    assert config["cluster"] == {"worker": ["127.0.0.1:47101", "127.0.0.1:47102", "10.77.0.8:47100"]}
    assert config["task"] == {"type": "worker", "index": 2}
    assert [anchor.tf_config(cfg, p)["task"]["index"] for p in (1, 2)] == [0, 1]


def test_ring_all_reduce_bytes_and_their_tally():
    assert anchor.ring_bytes(1, 1000) == 0
    assert anchor.ring_bytes(2, 1000) == 1000
    assert anchor.ring_bytes(4, 1000) == 1500
    traffic = anchor.Traffic(3, 300)
    for _ in range(10):
        traffic.step()
    traffic.agree()
    assert traffic.by_kind == {"grad": pytest.approx(10 * 4 / 3 * 1200),
                               "control": pytest.approx(10 * 4 / 3 * 8 + 4 / 3 * 4)}
    assert traffic.fields() == {"bytes_sent": 16112, "bytes_received": 16112, "messages_dropped": 0}


def test_what_each_method_emulates_for_grpc():
    cfg = configmod.load(QUICKSTART, ["links.default.latency=10ms"])
    method = lambda m: dataclasses.replace(cfg, emulation=Emulation(m))
    assert anchor.emulated(method("real"), kernel_latency=False) == {
        "method": "real", "compute": True, "bandwidth": True, "latency": False, "configured_latency": True}
    assert anchor.emulated(method("real"), kernel_latency=True)["latency"] is True
    assert anchor.emulated(method("fallback")) == {
        "method": "cpu-only", "compute": True, "bandwidth": False, "latency": False, "configured_latency": True}
    assert anchor.emulated(configmod.load(QUICKSTART)) == {
        "method": "none", "compute": False, "bandwidth": False, "latency": False, "configured_latency": False}


def test_worker_i_trains_on_what_dlion_gives_peer_i_in_its_batch_order():
    cfg = configmod.load(QUICKSTART, SYNTHETIC)
    bsp = configmod.load(QUICKSTART, [*SYNTHETIC, "preset=bsp"])
    dataset = wiring.load_dataset(cfg)
    _, pool = wiring.evaluation_split(cfg, dataset, seed=cfg.seed)
    parts = datamod.partition(dataset.y_train[pool], 3, "iid", seed=cfg.seed)
    seen = []
    for i, peer in enumerate(sorted(cfg.peer_ids)):
        local, sampler = anchor.worker_data(cfg, peer)
        np.testing.assert_array_equal(local.train_idx, pool[parts[i]])
        peer_local = wiring._make_data(bsp, peer, None, wiring.requirements(bsp))  # a bsp peer's data
        np.testing.assert_array_equal(local.train_idx, peer_local.train_idx)
        np.testing.assert_array_equal(sampler.next(32), wiring.batch_sampler(bsp, peer, peer_local.train_idx).next(32))
        seen.append(local.train_idx)
    assert len(np.unique(np.concatenate(seen))) == sum(map(len, seen)) == len(pool)


def _events(path, peer, evals, traffic, t0=1000.0, label="none"):
    """A worker's events as `anchor.worker` writes them: evals are (iteration, train_s, accuracy)."""
    events = [{"ev": "start", "peer": peer, "t": t0, "emulation": label, "baseline": "mwms"}]
    events += [{"ev": "eval", "peer": peer, "t": t0 + s + 1, "it": it, "acc": acc, "train_s": s}
               for it, s, acc in evals]
    events.append({"ev": "final", "peer": peer, "t": t0 + 30, "stop_reason": "target", "it": 100, "steps": 100,
                   "samples": 3200, "train_s": 25.0, "samples_per_s": 128.0, "acc": 0.87, **traffic.fields(),
                   "bytes_by_kind": {k: round(v) for k, v in traffic.by_kind.items()}})
    (path / f"peer-{peer}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def test_the_summary_is_a_dlion_runs_with_the_anchors_fields(tmp_path):
    cfg = configmod.load(QUICKSTART)
    traffic = anchor.Traffic(3, 225034)
    for _ in range(100):
        traffic.step()
    for peer in cfg.peer_ids:
        _events(tmp_path, peer, [(50, 10.0, 0.8), (100, 20.0, 0.885)], traffic)
    what = anchor.emulated(cfg)
    summary = anchor.summary_of(tmp_path, cfg, 40.0, what, None, interrupted=False)
    assert summary["time_to_target_s"] == 20.0 and summary["final_accuracy"] == 0.87
    assert summary["emulation"] == "none" and summary["peers_finished"] == 3 and summary["train_s"] == 25.0
    assert summary["bytes_sent_total"] == 3 * traffic.fields()["bytes_sent"]
    assert summary["baseline"] == "mwms" and summary["bytes_estimated"] and summary["emulated"] == what
    assert summary["settings"]["worker_batch"] == 32 and summary["interrupted"] is False
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    figures = aggregate([load_run(tmp_path)], None)  # as scripts/compare.py reads a column's run
    assert figures["grad_bytes_per_iter"] == pytest.approx(anchor.ring_bytes(3, 4 * 225034), abs=1)
    assert figures["samples_per_s"] == 3 * 128.0 and figures["time_to_target_s"] == 20.0


@pytest.mark.integration
@requires_fashion
def test_a_small_run_of_three_workers_on_the_quickstart(tmp_path):
    """Three MWMS worker processes on loopback, 30 steps: they stop together, with one model between them."""
    ports = free_ports(3)
    out = tmp_path / "mwms"
    argv = [PYTHON, str(ROOT / "scripts" / "anchor_mwms.py"), str(QUICKSTART), "--out", str(out),
            "--set", "training.max_iterations=30", "--set", "evaluation.every_iterations=15",
            *(f"--set=peers.{i}.port={port}" for i, port in enumerate(ports))]
    done = subprocess.run(argv, capture_output=True, text=True, env=python_env(), timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["baseline"] == "mwms"
    run = load_run(out)
    summary = run["summary"]
    assert summary["peers_finished"] == 3 and summary["emulation"] == "none"
    assert {p["stop_reason"] for p in summary["peers"].values()} == {"max_iterations"}
    assert {p["iterations"] for p in summary["peers"].values()} == {30}
    assert len({p["final_accuracy"] for p in summary["peers"].values()}) == 1  # mirrored: one model
    assert summary["final_accuracy"] > 0.5  # 30 steps of 96 samples learn something
    evals = [e for pid in (0, 1, 2) for e in read_events(out / f"peer-{pid}.jsonl") if e["ev"] == "eval"]
    assert sorted({e["it"] for e in evals}) == [15, 30]
    assert all(len({e["acc"] for e in evals if e["it"] == it}) == 1 for it in (15, 30))  # all score one model
    assert run["curve"] and run["curve"][-1][1] == evals[-1]["acc"]
    per_peer_bytes = summary["peers"]["0"]["bytes_by_kind"]["grad"]
    assert per_peer_bytes == pytest.approx(30 * anchor.ring_bytes(3, 4 * 225034), abs=1)
