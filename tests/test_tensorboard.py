"""dlion/tensorboard.py: a peer's events as TensorBoard scalars, read back with TensorBoard's own reader; no TensorFlow.

TensorBoard's reader prefers TensorFlow's file I/O where TensorFlow is installed; `tensorboard.compat.notf` (the
module its no-TensorFlow build adds) makes it use its pure-Python stub, so these tests stay TensorFlow-free."""
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest

from conftest import PYTHON, ROOT, python_env
from dlion import config as configmod
from dlion.metrics import EventLog, peer_log_path, read_events
from dlion.tensorboard import TensorBoardSink, logdir, scalars, tensorboard_sinks

sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


@dataclass
class Output:
    tensorboard: bool = True


def read_back(directory) -> EventAccumulator:
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def series(acc, tag):
    return [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)]


def progress(log, it, loss, sent, **extra):
    return log.emit("iter", it=it, batch=32, samples=32 * it, samples_per_s=100.0 + it, loss=loss, compute_s=0.02,
                    wait_s=0.005 * it, max_wait_s=0.01, bytes_sent=sent, bytes_received=sent // 2,
                    messages_dropped=0, cpu=0.9, rss_mb=300.0, alloc={"0": 32}, links={}, **extra)


def test_iter_eval_and_final_events_become_scalars_at_their_iteration(tmp_path):
    log = EventLog(peer_log_path(tmp_path, 3), 3, sinks=tensorboard_sinks(Output(), tmp_path, 3))
    log.emit("start", pid=1, cores=0.5)
    first = progress(log, 10, 2.25, 1000, gossip={"w": 0.75, "received": 1, "sent": {"1": 10}})
    progress(log, 20, 1.5, 2500)
    log.emit("eval", it=20, acc=0.625, loss=1.4, mean_acc=0.6, peers_reported=2, train_s=3.0, eval_s=0.2)
    log.emit("transfer", it=25, src=1, bytes=900)
    log.emit("final", it=30, acc=0.7, loss=1.1, samples=960, bytes_sent=4000, stop_reason="max_iterations")
    log.close()

    acc = read_back(logdir(tmp_path, 3))
    assert logdir(tmp_path, 3) == tmp_path / "tensorboard" / "peer-3"
    assert series(acc, "train/loss") == [(10, 2.25), (20, 1.5)]
    assert series(acc, "eval/accuracy") == [(20, 0.625)]
    assert series(acc, "eval/mean_accuracy_of_peers") == [(20, 0.6)]
    assert series(acc, "train/samples_per_s") == [(10, 110.0), (20, 120.0)]
    assert series(acc, "train/batch_size") == [(10, 32), (20, 32)]
    assert series(acc, "train/wait_s") == [(10, 0.05), (20, 0.1)]
    assert series(acc, "net/bytes_sent") == [(10, 1000), (20, 2500)]
    assert series(acc, "net/bytes_received") == [(10, 500), (20, 1250)]
    assert series(acc, "train/push_sum_weight") == [(10, 0.75)]  # only where the event has gossip
    assert series(acc, "final/test_accuracy") == [(30, 0.7)]
    assert acc.Scalars("train/loss")[0].wall_time == pytest.approx(first["t"])
    tags = set(acc.Tags()["scalars"])
    assert {"train/compute_s", "system/cpu_cores", "system/rss_mb", "final/test_loss"} <= tags
    assert not any("transfer" in t or "start" in t for t in tags)
    assert [e["ev"] for e in read_events(peer_log_path(tmp_path, 3))] == ["start", "iter", "iter", "eval",
                                                                          "transfer", "final"]  # the JSONL as before


def test_scalars_keep_numbers_only():
    event = {"ev": "iter", "it": 5, "loss": 0.5, "rate": None, "batch": True, "gossip": {"w": "x"}, "cpu": 2}
    assert scalars(event) == [("train/loss", 0.5), ("system/cpu_cores", 2.0)]
    assert scalars({"ev": "change", "it": 5, "cores": 0.5}) == []


def test_a_killed_peer_leaves_readable_files_and_the_writer_needs_no_tensorflow(tmp_path):
    script = f"""
import os, signal, sys
from dlion.metrics import EventLog, peer_log_path
from dlion.tensorboard import tensorboard_sinks
class Output: tensorboard = True
log = EventLog(peer_log_path({str(tmp_path)!r}, 0), 0, sinks=tensorboard_sinks(Output, {str(tmp_path)!r}, 0))
for it in (10, 20, 30):
    log.emit("iter", it=it, loss=1.0 / it, batch=16, bytes_sent=100 * it)
print("tensorflow" in sys.modules, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush at exit
"""
    done = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=python_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -9 and done.stdout.strip() == "False", done.stderr
    acc = read_back(logdir(tmp_path, 0))
    assert series(acc, "train/loss") == [(10, 0.1), (20, 0.05), (30, 1 / 30)]


def test_switch_fresh_run_and_a_peer_that_goes_on(tmp_path):
    assert configmod.load(ROOT / "configs" / "quickstart.yaml").output.tensorboard is True
    off = configmod.load(ROOT / "configs" / "quickstart.yaml", ["output.tensorboard=false"]).output
    assert tensorboard_sinks(off, tmp_path, 0) == [] and not (tmp_path / "tensorboard").exists()

    def run(its):
        log = EventLog(peer_log_path(tmp_path, 0), 0, sinks=tensorboard_sinks(Output(), tmp_path, 0))
        for it in its:
            log.emit("iter", it=it, loss=float(it))
        log.close()

    run([10, 20])
    run([30])  # the JSONL goes on (a resumed peer): a second event file beside the first
    assert len(list(logdir(tmp_path, 0).glob("events.out.tfevents.*"))) == 2
    assert [s for s, _ in series(read_back(logdir(tmp_path, 0)), "train/loss")] == [10, 20, 30]
    peer_log_path(tmp_path, 0).unlink()  # a fresh run (dlion run removed the earlier JSONL): a fresh directory
    run([10])
    assert len(list(logdir(tmp_path, 0).glob("events.out.tfevents.*"))) == 1
    assert series(read_back(logdir(tmp_path, 0)), "train/loss") == [(10, 10.0)]


def test_a_failing_sink_is_dropped_and_the_log_goes_on(tmp_path, caplog):
    class Broken(TensorBoardSink):
        def write(self, event):
            raise OSError("disk full")

    sink = Broken(tmp_path / "tb")
    log = EventLog(peer_log_path(tmp_path, 1), 1, sinks=[sink])
    log.emit("iter", it=10, loss=1.0)
    log.emit("iter", it=20, loss=0.5)
    log.close()
    assert [e["it"] for e in read_events(peer_log_path(tmp_path, 1))] == [10, 20]
    assert [r.getMessage() for r in caplog.records] == ["peer 1: event sink Broken failed; its events stop here"]
