"""Launcher pieces that need no peers: the progress line, the output directory, the restart policy."""
import io
import subprocess
import sys
import time

from dlion import config, launch
from dlion.config import Restart
from dlion.launch import Progress, Restarts, hard_limit_s, prepare_out_dir
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


def _process(code: int | None) -> subprocess.Popen:
    """A stand-in peer process: one that exits with `code` at once, or (None) one that keeps running."""
    script = "import time; time.sleep(60)" if code is None else f"raise SystemExit({code})"
    proc = subprocess.Popen([sys.executable, "-c", script])
    if code is not None:
        proc.wait()
    return proc


def _restarts(tmp_path, policy="on-failure", max_restarts=2, backoff_s=0.2):
    started = []

    def relaunch(peer_id):
        started.append((peer_id, time.monotonic()))
        return _process(1)  # the restarted peer fails again

    return Restarts(Restart(policy, max_restarts, backoff_s), relaunch, tmp_path, io.StringIO()), started


def test_a_failed_peer_is_restarted_after_a_doubling_backoff_at_most_max_restarts_times(tmp_path):
    restarts, started = _restarts(tmp_path)
    procs = {0: _process(None), 1: _process(1)}
    try:
        t0 = time.monotonic()
        while time.monotonic() < t0 + 2.0:
            restarts.tick(procs, time.monotonic())
            time.sleep(0.01)
        assert [p for p, _ in started] == [1, 1] and restarts.counts == {1: 2}
        assert 0.2 <= started[0][1] - t0 < 0.35  # backoff_s
        assert 0.4 <= started[1][1] - started[0][1] < 0.55  # doubled
        assert not restarts.pending and "restart 2 of at most 2" in restarts.stream.getvalue()
    finally:
        procs[0].kill()


def test_no_restart_for_a_peer_that_finished_when_no_one_else_trains_or_under_never(tmp_path):
    done = EventLog(peer_log_path(tmp_path, 1), 1)
    done.emit("final", acc=0.87)
    done.close()
    alive = _process(None)
    try:
        for procs, policy in [({0: alive, 1: _process(1)}, "on-failure"),  # peer 1 wrote its final event
                              ({0: _process(0), 2: _process(1)}, "on-failure"),  # the run is over for everyone
                              ({0: alive, 2: _process(1)}, "never")]:
            restarts, started = _restarts(tmp_path, policy, backoff_s=0.0)
            for _ in range(3):
                restarts.tick(procs, time.monotonic())
            assert started == [] and not restarts.pending
    finally:
        alive.kill()


def test_the_launcher_caps_a_ready_peer_and_uncaps_it_once_its_training_is_over(tmp_path):
    class Emulation:
        def __init__(self):
            self.moves = []

        def attach(self, peer_id, pid):
            self.moves.append(("attach", peer_id, pid))

        def release(self, pid):
            self.moves.append(("release", pid))

    class Alive:
        pid = 4242

        def poll(self):
            return None

    emulation = Emulation()
    run_ = launch.Launched(None, {1: Alive()}, emulation, 0.0, tmp_path)
    run_.attach_ready()
    assert emulation.moves == []
    launch.ready_file(tmp_path, 1).touch()
    run_.attach_ready()
    (tmp_path / ".peer-1.trained").touch()
    run_.attach_ready()
    run_.attach_ready()  # each file is acted on once
    assert emulation.moves == [("attach", 1, 4242), ("release", 4242)]
    assert not list(tmp_path.glob(".peer-*"))
