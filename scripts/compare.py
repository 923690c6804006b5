#!/usr/bin/env python3
"""Presets side by side on one scenario: time to target, accuracy, throughput and bytes, as a table and a plot.

    python3 scripts/compare.py SCENARIO --presets bsp,dlion --repeats R --out DIR [--set KEY.PATH=VALUE ...] [--ideal]

A column may also be a preset with overrides of its own, in brackets and separated by semicolons:
`--presets "full,full[security.mode=none]"` runs the full peer with and without CURVE side by side. A column named
after an anchor (ANCHORS: `mwms`, TensorFlow's MultiWorkerMirroredStrategy with the scenario's settings,
`scripts/anchor_mwms.py`) runs that script instead of `dlion run`, into the same place and with the same overrides.

The claims of issue 4 are relative (dlion against the dense BSP baseline on the same machine), and this machine is
noisy, so every preset runs in one invocation, one run after another, R times, the order alternating between repeats
(bsp, dlion; dlion, bsp; ...) so that machine drift hits every preset alike. Each run is
`dlion run SCENARIO --out DIR/runs/<preset>-r<k> --set preset=<preset> [--set ...]`: the `--set` overrides apply to
every run, and a run's console is in its directory as `run.log`. Per preset, over the repeats that finished
(`repeats`; `failed` counts the others):

- time_to_target_s: median over the repeats that reached the target; null if fewer than half did (reached_target
  says how many did);
- final_accuracy: mean of the runs' mean final accuracy; worst_final_accuracy: the worst peer of any repeat;
- samples_per_s: mean over repeats of the sum over peers; bytes_total: mean of the bytes all peers sent;
- grad_bytes_per_iter, model_bytes_per_iter: bytes sent in gradient messages (`grad`) and in parameter messages
  (`model` of knowledge transfer, `gossip`), summed over peers, over the
  iterations summed over peers (mean over repeats); a run whose summary has no per-kind counts (`bytes_by_kind`)
  counts 0 and is noted (runs_without_bytes_by_kind); bytes_per_peer_iter: every byte the peers sent (control
  messages too) over the iterations summed over peers;
- x_ideal (with --ideal): the median time to target over that of the ideal reference (`scripts/ideal.py`: one
  process, all the machine's cores and all the data, no communication), run once before the presets;
- accuracy_at_equal_time: mean over repeats of the peers' mean evaluation accuracy at equal_time_s, the latest
  training time that every run of every preset reached (the earliest of the runs' last evaluations), so that
  a preset that stopped early at the target is compared where every run has figures.

The accuracy at a time is the mean over peers of each peer's latest evaluation-subset accuracy, counted once every
peer has reported one, as for the summary's time to target. DIR/compare.md and DIR/compare.csv hold the table,
DIR/compare.json the figures, DIR/compare.png the accuracy against training time (evaluation pauses left out, as in the summary; every repeat
faint, their mean bold, the target dashed). A failed run (non-zero exit or no summary.json) is reported with the tail
of its peer logs and left out of the figures; the rest is still written, and the exit status is 1. Ctrl-C, or SIGINT
or SIGTERM sent to the script alone, stops the current run cleanly and starts no other. A config mistake, in a
`--set` or a preset name, exits 2 before any run. The plot needs matplotlib (the `bench` extra). The last line is a
JSON object {"scenario": NAME, "presets": {PRESET: {...}}, "ideal": {...} or null}. The table, CSV and plot are
drawn by dlion/report.py; `dlion report DIR/runs` tabulates and plots the same runs one by one (accuracy against
time and bytes, loss).
"""
from __future__ import annotations

import argparse
import re
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlion import config as configmod  # noqa: E402
from dlion import report  # noqa: E402
from dlion.analysis import aggregate, equal_time, load_run  # noqa: E402
from dlion.schema import ConfigError  # noqa: E402

TAIL_LINES = 5
ANCHORS = {"mwms": ROOT / "scripts" / "anchor_mwms.py"}  # columns that are not presets: the script that runs them
COLUMNS = [  # (figure, markdown header; {t} is the equal time)
    ("repeats", "repeats"),
    ("failed", "failed"),
    ("reached_target", "reached target"),
    ("time_to_target_s", "time to target (s, median)"),
    ("final_accuracy", "final accuracy (mean)"),
    ("worst_final_accuracy", "worst peer final accuracy"),
    ("accuracy_at_equal_time", "accuracy at {t}"),
    ("samples_per_s", "samples/s (all peers)"),
    ("grad_bytes_per_iter", "grad bytes/iter"),
    ("model_bytes_per_iter", "model bytes/iter"),
    ("bytes_per_peer_iter", "bytes/peer-iter (all)"),
    ("bytes_total", "bytes sent"),
    ("x_ideal", "time / ideal"),
]


# ---- outputs (the table, CSV and plot functions are dlion.report's) ------------------------------------------------

plot = report.plot_accuracy  # (curves per preset, target, equal time, path, title)


def markdown(scenario: str, figures: dict[str, dict], command: str, ideal: dict | None = None) -> str:
    """The table with the command that produced it and what its columns mean."""
    t_equal = next(iter(figures.values()), {}).get("equal_time_s")
    lines = [f"# {scenario}: {', '.join(figures)}", "", f"`{command}`", "",
             *report.table("preset", figures, COLUMNS, t_equal)]
    lines += ["", "Medians and means over the repeats that finished; accuracy at a time is the peers' mean of their "
                  "latest evaluation-subset accuracy, at the latest training time that every run reached."]
    if ideal is not None:
        cell = report.cell
        lines += ["", f"Ideal reference (`scripts/ideal.py`: one process, {ideal['threads']} threads, all the data, "
                      f"no communication): time to target {cell('time_to_target_s', ideal['time_to_target_s'])} s, "
                      f"final accuracy {cell('final_accuracy', ideal['final_accuracy'])}, "
                      f"{cell('samples_per_s', ideal['samples_per_s'])} samples/s."]
    anchors = [name for name in figures if column_runs(name)[0] in ANCHORS]
    if anchors:
        lines += ["", f"{', '.join(anchors)}: TensorFlow's own distribution strategy with the scenario's settings "
                      f"(scripts/anchor_mwms.py); its bytes are the ring all-reduce's, estimated, not counted."]
    missing = sum(f["runs_without_bytes_by_kind"] for f in figures.values())
    if missing:
        lines += ["", f"{missing} run(s) had no per-kind byte counts (`bytes_by_kind`): their grad and model bytes "
                      f"per iteration count as 0."]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, figures: dict[str, dict]) -> None:
    report.write_csv(path, figures, "preset")


# ---- running ---------------------------------------------------------------------------------------------------------

def run_order(presets: list[str], repeats: int) -> list[tuple[int, str]]:
    """(repeat, preset) in the order they run: the preset order reverses every other repeat (ABBA)."""
    return [(k, p) for k in range(1, repeats + 1) for p in (presets if k % 2 else presets[::-1])]


def columns(text: str) -> list[str]:
    """The comma-separated columns of --presets; commas inside brackets belong to a column's overrides."""
    items, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    return [c for c in [*items, current.strip()] if c]


def column_runs(column: str) -> tuple[str, list[str]]:
    """(preset, the column's own overrides) of a column `preset` or `preset[KEY=VALUE;KEY=VALUE]`."""
    preset, _, rest = column.partition("[")
    own = [item.strip() for item in rest.rstrip("]").split(";") if item.strip()] if rest else []
    return preset.strip(), own


def run_dir(out: Path, column: str, repeat: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", column).strip("-")
    return Path(out) / "runs" / f"{safe}-r{repeat}"


def run_argv(scenario: str, column: str, path: Path, overrides: list[str]) -> list[str]:
    """The command line of one run of a column: `dlion run` of its preset, or its anchor's script."""
    preset, own = column_runs(column)
    if preset in ANCHORS:
        argv = [sys.executable, str(ANCHORS[preset]), scenario, "--out", str(path)]
    else:
        argv = [sys.executable, "-m", "dlion", "run", scenario, "--out", str(path), "--set", f"preset={preset}"]
    for item in [*overrides, *own]:
        argv += ["--set", item]
    return argv


def run_one(scenario: str, column: str, path: Path, overrides: list[str]) -> tuple[int, bool]:
    """One run of a column (`run_argv`) into a fresh directory, its console relayed here and kept in `run.log`.

    SIGINT or SIGTERM to this script (or Ctrl-C, which reaches the whole process group) is passed on to the run as
    SIGINT, which stops its peers cleanly and writes its summary. Returns the run's exit status and whether it was
    interrupted.
    """
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    argv = run_argv(scenario, column, path, overrides)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    interrupted = []
    with open(path / "run.log", "w") as log, subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            env=env) as proc:

        def interrupt(*_):
            interrupted.append(True)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)

        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for line in proc.stdout:
                log.write(line)
                print(f"  [{path.name}] {line}", end="", flush=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return proc.returncode, bool(interrupted)


def run_ideal(scenario: str, overrides: list[str], out: Path) -> dict | None:
    """The ideal reference of the scenario (`scripts/ideal.py`), kept in `out/ideal.json`; None if it failed."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(ROOT / "scripts" / "ideal.py"), scenario]
    for item in overrides:
        argv += ["--set", item]
    print("== ideal reference", flush=True)
    done = subprocess.run(argv, capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT)))
    if done.returncode != 0:
        print(f"FAILED: the ideal reference (exit status {done.returncode}): {done.stderr[-2000:]}", flush=True)
        return None
    (out / "ideal.json").write_text(done.stdout.strip().splitlines()[-1] + "\n")
    ideal = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"ideal: time to target {ideal['time_to_target_s']} s, {ideal['samples_per_s']} samples/s", flush=True)
    return ideal


def ratio_to(ideal: dict | None, runs: list[dict]) -> float | None:
    """The median time to target of `runs` over the ideal reference's (None where either is missing)."""
    reached = sorted(r["summary"]["time_to_target_s"] for r in runs if r["summary"].get("time_to_target_s"))
    if not ideal or not ideal.get("time_to_target_s") or not reached or 2 * len(reached) < len(runs):
        return None
    return round(statistics.median(reached) / ideal["time_to_target_s"], 3)


def report_failure(preset: str, repeat: int, path: Path, code: int, interrupted: bool) -> None:
    why = (f"exit status {code}" + (", interrupted" if interrupted else "")
           + ("" if (path / "summary.json").exists() else ", no summary.json"))
    print(f"FAILED: {preset} repeat {repeat} ({why}); its logs are in {path}", flush=True)
    if interrupted:
        return
    logs = sorted(path.glob("peer-*.log"))
    for log in logs:
        print(f"  {log}:")
        for line in log.read_text(errors="replace").splitlines()[-TAIL_LINES:]:
            print(f"    {line}")
    if not logs:
        print(f"  no peer logs; the run's console is in {path / 'run.log'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", help="YAML config of the scenario")
    parser.add_argument("--presets", default="bsp,dlion", help="comma-separated presets (default: bsp,dlion)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each preset (default: 3)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config key in every run (repeatable)")
    parser.add_argument("--ideal", action="store_true",
                        help="also run the ideal reference once (scripts/ideal.py) and give each preset's time as a "
                             "ratio to it")
    args = parser.parse_args(argv)
    presets = columns(args.presets)
    if not presets or args.repeats < 1:
        parser.error("expected at least one preset and one repeat")
    if any(item.split("=", 1)[0].strip() == "preset" for item in args.set):
        parser.error("the preset is chosen by --presets, not --set preset=...")
    try:
        cfg = configmod.load(args.scenario, args.set)
        for column in presets:  # a mistake stops here, before any run
            preset, own = column_runs(column)
            configmod.load(args.scenario, [*args.set, *([] if preset in ANCHORS else [f"preset={preset}"]), *own])
    except ConfigError as exc:
        print(f"compare: config error: {exc}", file=sys.stderr)
        return 2

    out = Path(args.out)
    ideal = run_ideal(args.scenario, args.set, out) if args.ideal else None
    runs: dict[str, list[dict]] = {p: [] for p in presets}
    failed = dict.fromkeys(presets, 0)
    order = run_order(presets, args.repeats)
    for n, (k, preset) in enumerate(order, 1):
        path = run_dir(out, preset, k)
        print(f"== run {n}/{len(order)}: {preset}, repeat {k} -> {path}", flush=True)
        code, interrupted = run_one(args.scenario, preset, path, args.set)
        if code == 0 and not interrupted and (path / "summary.json").exists():
            runs[preset].append(load_run(path))
            s = runs[preset][-1]["summary"]
            reached = "not reached" if s["time_to_target_s"] is None else f"{s['time_to_target_s']} s"
            print(f"{preset} r{k}: time to target {reached}, final accuracy {s['final_accuracy']}, "
                  f"{s['bytes_sent_total']:,} bytes sent", flush=True)
        else:
            failed[preset] += 1
            report_failure(preset, k, path, code, interrupted)
        if interrupted:
            print("interrupted: no further runs; writing what the finished runs give", flush=True)
            break

    curves = {p: [r["curve"] for r in runs[p]] for p in presets}
    t_equal = equal_time([c for cs in curves.values() for c in cs])
    figures = {p: {**aggregate(runs[p], t_equal, failed[p]), "x_ideal": ratio_to(ideal, runs[p])} for p in presets}
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(cfg.name, figures, shlex.join(["python3", "scripts/compare.py", *argv]), ideal)
    (out / "compare.md").write_text(table)
    write_csv(out / "compare.csv", figures)
    plot(curves, cfg.training.target_accuracy, t_equal, out / "compare.png", f"{cfg.name}: {', '.join(presets)}")
    print(table)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}"
          + (f"; {sum(failed.values())} run(s) failed" if any(failed.values()) else ""), flush=True)
    result = json.dumps({"scenario": cfg.name, "presets": figures, "ideal": ideal})
    (out / "compare.json").write_text(result + "\n")
    print(result)
    return 1 if any(failed.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
