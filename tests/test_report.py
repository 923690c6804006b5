"""`dlion report` on fake run directories (test_analysis.py's), and the curves it plots (dlion.analysis)."""
import csv
import json
import os
import subprocess

import pytest

from conftest import PYTHON, ROOT, python_env
from dlion.analysis import accuracy_by_bytes, load_run, loss_curves
from test_analysis import PEER, T0, evals_until, fake_run

PNG = b"\x89PNG\r\n\x1a\n"
DONE = {**PEER, "finished": True, "bytes_sent": 5000}  # 10,000 bytes over 200 peer-iterations: 50 per peer-iteration


def with_progress(path, preset, loss0=2.0, seconds=40):
    """A fake run's peers' iter events every 5 s (loss falling, 1,000 bytes sent per 5 s), and its config.yaml."""
    for pid in (0, 1):
        rows = [{"ev": "iter", "peer": pid, "t": T0 + s + 0.1, "it": s, "loss": loss0 / s, "bytes_sent": 200 * s}
                for s in range(5, seconds + 1, 5)]
        with open(path / f"peer-{pid}.jsonl", "a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in rows))
    (path / "config.yaml").write_text(f"name: fake\npreset: {preset}\ntraining:\n  target_accuracy: 0.85\n")
    return path


def dlion(*args, env=None):
    return subprocess.run([PYTHON, "-m", "dlion", *map(str, args)], cwd=ROOT, env=env or python_env(),
                          capture_output=True, text=True, timeout=120)


def test_report_tabulates_and_plots_existing_runs(tmp_path):
    runs = tmp_path / "cmp" / "runs"
    with_progress(fake_run(runs / "bsp-r1", evals_until(40, 0.8), ttt=30.0, peers={0: DONE, 1: DONE}), "bsp")
    rising = [(p, s, 0.7 + s / 200) for s in range(10, 31, 10) for p in (0, 1)]
    with_progress(fake_run(runs / "dlion-r1", rising, ttt=None, final=0.86, worst=0.85, peers={0: DONE, 1: DONE},
                           bytes_total=800), "dlion")
    out = tmp_path / "report"
    done = dlion("report", runs, "-o", out)  # a directory of runs stands for them
    assert done.returncode == 0, done.stderr
    header = ("| run | preset | peers finished | target | time to target (s) | final accuracy (mean) | worst peer final "
              "accuracy | accuracy at 30.0 s | training time (s) | samples/s (all peers) | grad bytes/iter | "
              "model bytes/iter | bytes/peer-iter (all) | bytes sent |")
    bsp = "| bsp-r1 | bsp | 2/2 | 0.8500 | 30.0 | 0.8000 | 0.7800 | 0.8000 | - | 100 | 20 | 1 | 50 | 1,000 |"
    dlion_row = "| dlion-r1 | dlion | 2/2 | 0.8500 | - | 0.8600 | 0.8500 | 0.8500 | - | 100 | 20 | 1 | 50 | 800 |"
    for text in (done.stdout, (out / "report.md").read_text()):
        assert header in text and bsp in text and dlion_row in text
    assert f"`dlion report {runs} -o {out}`" in done.stdout
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [(r["run"], r["preset"], r["time_to_target_s"]) for r in rows] == [("bsp-r1", "bsp", "30.0"),
                                                                             ("dlion-r1", "dlion", "")]
    assert rows[0]["accuracy_at_equal_time"] == "0.8" and rows[0]["equal_time_s"] == "30.0"
    for plot in ("accuracy_time.png", "accuracy_bytes.png", "loss_time.png"):
        assert (out / plot).read_bytes()[:8] == PNG, plot


def test_a_run_without_summary_is_summarized_from_its_events_and_target_retimes(tmp_path):
    run = fake_run(tmp_path / "killed", [(p, s, 0.5 + s / 100) for s in range(10, 41, 10) for p in (0, 1)])
    with_progress(run, "full")
    (run / "summary.json").unlink()
    out = tmp_path / "out"
    done = dlion("report", run, "-o", out, "--no-plots")
    assert done.returncode == 0, done.stderr
    # its own target 0.85 (config.yaml) first met at 40 s; both peers unfinished (no final accuracy, no per-kind
    # bytes); bytes from their last iter events: 2 x 8,000 over 2 x 40 iterations
    assert "| killed | full | 0/2 | 0.8500 | 40.0 | - | - | 0.9000 | - | 0 | 0 | 0 | 200 | 16,000 |" in done.stdout
    assert not list(out.glob("*.png")) and "Plots:" not in (out / "report.md").read_text()
    done = dlion("report", run, "-o", out, "--no-plots", "--target", "0.7")
    assert "| killed | full | 0/2 | 0.7000 | 20.0 |" in done.stdout


def test_what_is_not_a_run_exits_2_and_nothing_is_written(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, message in [((tmp_path / "empty",), "not a run directory"), ((tmp_path / "nowhere",), "no such"),
                          ((tmp_path / "empty", "--target", "85"), "expected an accuracy in [0, 1]")]:
        done = dlion("report", *args, "-o", tmp_path / "out")
        assert done.returncode == 2 and message in done.stderr and done.stderr.startswith("dlion: report error:")
    assert not (tmp_path / "out").exists()


def test_without_matplotlib_the_table_is_written_and_the_message_says_how(tmp_path):
    fake_run(tmp_path / "r", evals_until(20))
    hide = tmp_path / "hide" / "matplotlib"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = python_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "hide"), env["PYTHONPATH"]])
    done = dlion("report", tmp_path / "r", "-o", tmp_path / "out", env=env)
    assert done.returncode == 1 and "pip install matplotlib" in done.stderr
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "report.csv").exists()
    assert not list((tmp_path / "out").glob("*.png"))


def test_accuracy_against_bytes_adds_up_the_peers_and_their_restarts():
    events = [{"ev": "start", "peer": 0, "t": 0.0}, {"ev": "start", "peer": 1, "t": 0.0},
              {"ev": "iter", "peer": 0, "t": 1.0, "bytes_sent": 100}, {"ev": "iter", "peer": 1, "t": 1.1,
                                                                        "bytes_sent": 300},
              {"ev": "eval", "peer": 0, "t": 2.0, "acc": 0.5}, {"ev": "eval", "peer": 1, "t": 2.1, "acc": 0.7},
              {"ev": "start", "peer": 0, "t": 5.0},  # peer 0 resumed: its counters start again
              {"ev": "iter", "peer": 0, "t": 6.0, "bytes_sent": 50},
              {"ev": "eval", "peer": 0, "t": 7.0, "acc": 0.9}]
    assert accuracy_by_bytes(events, [0, 1]) == [(400.0, pytest.approx(0.6)), (450.0, pytest.approx(0.8))]


def test_loss_leaves_evaluation_pauses_out_like_the_accuracy_curve():
    events = [{"ev": "start", "peer": 0, "t": 100.0},
              {"ev": "iter", "peer": 0, "t": 104.0, "loss": 2.0},
              {"ev": "eval", "peer": 0, "t": 113.0, "it": 10, "acc": 0.5, "train_s": 5.0},  # a 3 s evaluation
              {"ev": "iter", "peer": 0, "t": 115.0, "loss": 1.0},
              {"ev": "start", "peer": 0, "t": 500.0, "resumed_from": 12},  # resumed from iteration 12
              {"ev": "iter", "peer": 0, "t": 501.0, "loss": 0.8}]
    assert loss_curves(events) == {0: [(4.0, 2.0), (7.0, 1.0), (6.0, 0.8)]}


def test_load_run_also_gives_the_bytes_and_loss_curves(tmp_path):
    run = load_run(with_progress(fake_run(tmp_path / "r", evals_until(20)), "bsp"))
    # at each point of the accuracy curve, both peers' latest iter events (1,000 bytes per 5 s each): at 5 s and 15 s
    assert run["bytes_curve"] == [(2000.0, 0.8), (6000.0, 0.8), (6000.0, 0.8)]
    assert [a for _, a in run["bytes_curve"]] == [a for _, a in run["curve"]]
    assert run["loss"][1][:2] == [(4.6, 0.4), (9.6, 0.2)]  # peer 1 started 0.5 s after T0
