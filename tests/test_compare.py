"""scripts/compare.py on fake run directories: run order, outputs and the main loop (its analysis: test_analysis.py)."""
import csv
import importlib.util
import json
from pathlib import Path

from conftest import ROOT
from dlion.analysis import aggregate, load_run
from test_analysis import PEER, evals_until, fake_run

_spec = importlib.util.spec_from_file_location("compare", ROOT / "scripts" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def test_run_order_alternates_between_repeats():
    assert compare.run_order(["bsp", "dlion"], 3) == [(1, "bsp"), (1, "dlion"), (2, "dlion"), (2, "bsp"),
                                                      (3, "bsp"), (3, "dlion")]
    assert compare.run_dir("out", "bsp", 2).as_posix() == "out/runs/bsp-r2"


def test_markdown_csv_and_plot(tmp_path):
    untagged = {"iterations": 10}
    runs = [load_run(fake_run(tmp_path / "a", evals_until(30), ttt=12.5, peers={0: PEER, 1: untagged}))]
    figures = {"bsp": aggregate(runs, 30.0), "dlion": aggregate([], 30.0, failed=1)}
    md = compare.markdown("hetero-4", figures, "python3 scripts/compare.py x.yaml")
    ideal = {"threads": 2, "time_to_target_s": 5.0, "final_accuracy": 0.9, "samples_per_s": 8000.0}
    assert compare.ratio_to(ideal, runs) == 2.5 and compare.ratio_to(None, runs) is None
    assert "Ideal reference" in compare.markdown("hetero-4", figures, "x", ideal)
    assert "| preset | repeats | failed | reached target | time to target (s, median) |" in md
    assert "accuracy at 30.0 s" in md and "`python3 scripts/compare.py x.yaml`" in md
    # 2000 / 110 and 100 / 110 grad and model bytes per peer-iteration; no bytes_sent per peer here: 0 in all
    assert "| bsp | 1 | 0 | 1 | 12.5 | 0.8000 | 0.7800 | 0.8000 | 50 | 18 | 1 | 0 | 1,000 | - |" in md
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


def test_a_column_is_a_preset_with_its_own_overrides():
    assert compare.columns("full,full[security.mode=none;transport.sndhwm=4],bsp") == [
        "full", "full[security.mode=none;transport.sndhwm=4]", "bsp"]
    assert compare.column_runs("full[security.mode=none;a.b=1]") == ("full", ["security.mode=none", "a.b=1"])
    assert compare.column_runs("bsp") == ("bsp", [])
    assert compare.run_dir(Path("o"), "full[security.mode=none]", 2) == Path("o/runs/full-security.mode-none-r2")


def test_the_mwms_column_runs_the_anchor_script_with_the_same_overrides(tmp_path):
    path = tmp_path / "runs" / "mwms-r1"
    argv = compare.run_argv("s.yaml", "mwms[training.max_iterations=5]", path, ["training.max_seconds=20"])
    assert argv[1:] == [str(ROOT / "scripts" / "anchor_mwms.py"), "s.yaml", "--out", str(path),
                        "--set", "training.max_seconds=20", "--set", "training.max_iterations=5"]
    assert compare.run_argv("s.yaml", "bsp", path, [])[1:] == ["-m", "dlion", "run", "s.yaml", "--out", str(path),
                                                               "--set", "preset=bsp"]


def test_main_takes_mwms_as_a_column_and_says_its_bytes_are_estimates(tmp_path, monkeypatch, capsys):
    columns = []

    def fake_run_one(scenario, column, path, overrides):
        columns.append(column)
        fake_run(path, evals_until(20))
        return 0, False

    monkeypatch.setattr(compare, "run_one", fake_run_one)
    code = compare.main([str(ROOT / "configs" / "quickstart.yaml"), "--presets", "bsp,mwms", "--repeats", "1",
                         "--out", str(tmp_path / "cmp")])
    assert code == 0 and columns == ["bsp", "mwms"]
    assert list(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["presets"]) == ["bsp", "mwms"]
    assert "mwms: TensorFlow's own distribution strategy" in (tmp_path / "cmp" / "compare.md").read_text()
    assert compare.main([str(ROOT / "configs" / "quickstart.yaml"), "--presets", "mwmz", "--out",
                         str(tmp_path / "bad")]) == 2  # neither a preset nor an anchor
