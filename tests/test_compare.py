"""scripts/compare.py on fake run directories: run order, aggregation over repeats, equal-time accuracy, outputs."""
import csv
import importlib.util
import json

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("compare", ROOT / "scripts" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

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


def test_run_order_alternates_between_repeats():
    assert compare.run_order(["bsp", "dlion"], 3) == [(1, "bsp"), (1, "dlion"), (2, "dlion"), (2, "bsp"),
                                                      (3, "bsp"), (3, "dlion")]
    assert compare.run_dir("out", "bsp", 2).as_posix() == "out/runs/bsp-r2"


def test_accuracy_curve_waits_for_every_peer_and_is_stepwise(tmp_path):
    run = compare.load_run(fake_run(tmp_path, [(0, 5, 0.6), (1, 6, 0.7), (0, 10, 0.8)]))
    assert run["curve"] == [(6.0, pytest.approx(0.65)), (10.0, pytest.approx(0.75))]  # from the first peer's start
    assert compare.value_at(run["curve"], 5.9) is None
    assert compare.value_at(run["curve"], 9.9) == pytest.approx(0.65)
    assert compare.value_at(run["curve"], 99) == pytest.approx(0.75)


def test_time_to_target_is_the_median_of_those_reached_and_null_below_half(tmp_path):
    def figures(name, ttts):
        runs = [compare.load_run(fake_run(tmp_path / f"{name}{i}", evals_until(20), ttt=t)) for i, t in enumerate(ttts)]
        return compare.aggregate(runs, t_equal=None)

    three = figures("a", [10.0, None, 20.0])
    assert three["time_to_target_s"] == 15.0 and three["reached_target"] == 2 and three["repeats"] == 3
    assert figures("b", [12.0, None])["time_to_target_s"] == 12.0  # half reached
    one = figures("c", [10.0, None, None])
    assert one["time_to_target_s"] is None and one["reached_target"] == 1
    assert three["accuracy_at_equal_time"] is None and compare.aggregate([], None, failed=3)["failed"] == 3


def test_means_worst_and_bytes_per_iteration(tmp_path):
    busy = {"iterations": 100, "samples_per_s": 30.0, "bytes_by_kind": {"grad": 6000, "model": 300}}
    untagged = {"iterations": 200, "samples_per_s": 10.0}  # a summary without per-kind counts
    runs = [compare.load_run(fake_run(tmp_path / "1", evals_until(20), final=0.8, worst=0.75, bytes_total=1000,
                                      peers={0: PEER, 1: busy})),
            compare.load_run(fake_run(tmp_path / "2", evals_until(20), final=0.9, worst=0.7, bytes_total=3000,
                                      peers={0: PEER, 1: untagged}))]
    f = compare.aggregate(runs, t_equal=None)
    assert f["final_accuracy"] == 0.85 and f["worst_final_accuracy"] == 0.7 and f["bytes_total"] == 2000
    assert f["samples_per_s"] == (80 + 60) / 2
    # run 1: (2000 + 6000) / 200 iterations = 40; run 2: 2000 / 300 = 6.67 (the untagged peer counts 0)
    assert f["grad_bytes_per_iter"] == round((40 + 2000 / 300) / 2, 1)
    assert f["model_bytes_per_iter"] == round((400 / 200 + 100 / 300) / 2, 1)
    assert f["runs_without_bytes_by_kind"] == 1


def test_accuracy_at_the_latest_time_every_run_reached(tmp_path):
    long = compare.load_run(fake_run(tmp_path / "long", [(0, 10, 0.5), (1, 10, 0.7), (0, 20, 0.8), (1, 30, 0.9)]))
    short = compare.load_run(fake_run(tmp_path / "short", [(0, 15, 0.82), (1, 15, 0.84), (0, 25, 0.9), (1, 25, 0.9)]))
    other = compare.load_run(fake_run(tmp_path / "other", evals_until(40, acc=0.7)))
    t_equal = compare.equal_time([long["curve"], short["curve"], other["curve"]])
    assert t_equal == 25.0
    f = compare.aggregate([long, short], t_equal)
    assert f["accuracy_at_equal_time"] == pytest.approx((0.75 + 0.9) / 2) and f["equal_time_s"] == 25.0
    assert compare.equal_time([long["curve"], []]) is None
    grid, mean = compare.mean_curve([long["curve"], short["curve"]])  # where both have values: 15..25 s
    assert grid == [15.0, 20.0, 25.0] and mean == pytest.approx([(0.6 + 0.83) / 2, (0.75 + 0.83) / 2, (0.75 + 0.9) / 2])


def test_markdown_csv_and_plot(tmp_path):
    untagged = {"iterations": 10}
    runs = [compare.load_run(fake_run(tmp_path / "a", evals_until(30), ttt=12.5, peers={0: PEER, 1: untagged}))]
    figures = {"bsp": compare.aggregate(runs, 30.0), "dlion": compare.aggregate([], 30.0, failed=1)}
    md = compare.markdown("hetero-4", figures, "python3 scripts/compare.py x.yaml")
    assert "| preset | repeats | failed | reached target | time to target (s, median) |" in md
    assert "accuracy at 30.0 s" in md and "`python3 scripts/compare.py x.yaml`" in md
    assert "| bsp | 1 | 0 | 1 | 12.5 | 0.8000 | 0.7800 | 0.8000 | 50 | 18 | 1 | 1,000 |" in md  # 2000 / 110, 100 / 110
    assert "| dlion | 0 | 1 | 0 | - | - |" in md and "1 run(s) had no per-kind byte counts" in md
    compare.write_csv(tmp_path / "compare.csv", figures)
    rows = list(csv.DictReader(open(tmp_path / "compare.csv")))
    assert [r["preset"] for r in rows] == ["bsp", "dlion"]
    assert rows[0]["time_to_target_s"] == "12.5" and rows[1]["time_to_target_s"] == "" and rows[1]["failed"] == "1"
    png = tmp_path / "compare.png"
    compare.plot({"bsp": [r["curve"] for r in runs], "dlion": []}, 0.85, 30.0, png, "hetero-4")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_runs_interleaved_counts_failures_and_ends_with_json(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_one(scenario, preset, path, overrides):
        calls.append((path.name, overrides))
        if path.name == "bsp-r2":
            return 1, False  # died before writing a summary
        fake_run(path, evals_until(30 if preset == "bsp" else 20), ttt=15.0 if preset == "dlion" else None)
        return 0, False

    monkeypatch.setattr(compare, "run_one", fake_run_one)
    out = tmp_path / "cmp"
    code = compare.main([str(ROOT / "configs" / "quickstart.yaml"), "--presets", "bsp,dlion", "--repeats", "2",
                         "--out", str(out), "--set", "training.max_seconds=20"])
    assert code == 1
    assert calls == [(n, ["training.max_seconds=20"]) for n in ("bsp-r1", "dlion-r1", "dlion-r2", "bsp-r2")]
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("FAILED: bsp repeat 2 (exit status 1, no summary.json)") for line in lines)
    result = json.loads(lines[-1])
    assert result["scenario"] == "quickstart" and list(result["presets"]) == ["bsp", "dlion"]
    bsp, dlion = result["presets"]["bsp"], result["presets"]["dlion"]
    assert (bsp["repeats"], bsp["failed"], bsp["time_to_target_s"]) == (1, 1, None)
    assert (dlion["repeats"], dlion["time_to_target_s"], dlion["equal_time_s"]) == (2, 15.0, 20.0)
    assert all((out / name).exists() for name in ("compare.md", "compare.csv", "compare.png"))
