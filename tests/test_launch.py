"""Launcher pieces that need no peers: the progress line and the output directory."""
import io

from dlion import config
from dlion.launch import Progress, hard_limit_s, prepare_out_dir
from dlion.metrics import EventLog, peer_log_path

CFG = config.parse({"peers": [{"id": 0, "port": 47000}, {"id": 1, "port": 47001}],
                    "training": {"max_seconds": 30}})


def test_progress_line_shows_iteration_batch_accuracy_and_rate(tmp_path):
    log = EventLog(peer_log_path(tmp_path, 0), 0)
    log.emit("iter", it=120, batch=32, samples_per_s=1500.0)
    log.emit("eval", it=100, acc=0.8125)
    log.close()
    done = EventLog(peer_log_path(tmp_path, 1), 1)
    done.emit("final", acc=0.87)
    done.close()
    stream = io.StringIO()
    progress = Progress(tmp_path, [0, 1], stream)
    progress.poll()
    progress.show(12.3)
    assert stream.getvalue() == "[  12.3s] p0 it   120 b   32 acc 0.812    1500/s | p1 done acc 0.870\n"


def test_prepare_out_dir_writes_resolved_config_and_clears_old_results(tmp_path):
    (tmp_path / "peer-0.jsonl").write_text("old\n")
    (tmp_path / "summary.json").write_text("{}")
    resolved = prepare_out_dir(CFG, tmp_path)
    assert config.load(resolved) == CFG
    assert not (tmp_path / "peer-0.jsonl").exists() and not (tmp_path / "summary.json").exists()


def test_hard_limit_covers_startup_and_training():
    assert hard_limit_s(CFG) > 30 + CFG.transport.startup_timeout_s
