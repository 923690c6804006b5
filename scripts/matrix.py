#!/usr/bin/env python3
"""Every preset on every scenario: one table of time to target, accuracy and bytes, with each preset's time against
the best other preset's and against the machine's limit.

    python3 scripts/matrix.py --presets bsp,pge,dlion,sparse-push,local,full --repeats 3 --out DIR
        [--scenarios quickstart,hetero-4,dynamic-4,hetero-4-skewed,wan-8] [--set KEY.PATH=VALUE ...]

For each scenario it runs `scripts/compare.py SCENARIO --presets ... --repeats R --ideal --out DIR/<scenario>` (so
presets alternate within a scenario, and the ideal reference runs once per scenario), then writes DIR/matrix.md and
DIR/matrix.csv: per scenario and preset, the median time to target, the mean and worst-peer final accuracy, bytes per
peer-iteration, the ratio of its time to that of the best other preset that reached the target (below 1: it is the
fastest), and to the ideal reference's. A scenario whose compare run failed is reported and the others go on; the
exit status is then 1. The last line is a JSON object with every row.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {"quickstart": "configs/quickstart.yaml", "hetero-4": "configs/scenarios/hetero-4.yaml",
             "dynamic-4": "configs/scenarios/dynamic-4.yaml",
             "hetero-4-skewed": "configs/scenarios/hetero-4-skewed.yaml", "wan-8": "configs/scenarios/wan-8.yaml"}
COLUMNS = [("time_to_target_s", "time to target (s)"), ("final_accuracy", "final accuracy"),
           ("worst_final_accuracy", "worst peer"), ("bytes_per_peer_iter", "bytes/peer-iter"),
           ("x_best_other", "time / best other"), ("x_ideal", "time / ideal")]


def rows_of(scenario: str, figures: dict) -> list[dict]:
    """One row per preset of a compare.py result, with its time against the best other preset's."""
    times = {p: f["time_to_target_s"] for p, f in figures["presets"].items()}
    rows = []
    for preset, f in figures["presets"].items():
        others = [t for p, t in times.items() if p != preset and t is not None]
        best_other = min(others) if others else None
        rows.append({"scenario": scenario, "preset": preset, **{k: f.get(k) for k, _ in COLUMNS},
                     "x_best_other": (round(times[preset] / best_other, 3)
                                      if times[preset] is not None and best_other else None)})
    return rows


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key.startswith("x_"):
        return f"{value:.2f}x"
    if "accuracy" in key:
        return f"{value:.4f}"
    if key == "bytes_per_peer_iter":
        return f"{value:,.0f}"
    return f"{value:.1f}"


def markdown(rows: list[dict], command: str, ideals: dict) -> str:
    lines = ["# Presets on every scenario", "", f"`{command}`", "",
             "| scenario | preset | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    lines += [f"| {r['scenario']} | {r['preset']} | " + " | ".join(_cell(k, r[k]) for k, _ in COLUMNS) + " |"
              for r in rows]
    lines += ["", "Ideal reference per scenario (one process, all cores, all data): " + ", ".join(
        f"{name} {ideal['time_to_target_s']} s" if ideal else f"{name} -" for name, ideal in ideals.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", required=True, help="comma-separated presets")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated scenario names ({', '.join(SCENARIOS)}) or YAML paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config key in every run (repeatable)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows, ideals, failed = [], {}, []
    for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        scenario = SCENARIOS.get(name, name)
        label = Path(scenario).stem if name not in SCENARIOS else name
        cmd = [sys.executable, str(ROOT / "scripts" / "compare.py"), scenario, "--presets", args.presets,
               "--repeats", str(args.repeats), "--out", str(out / label), "--ideal"]
        for item in args.set:
            cmd += ["--set", item]
        print(f"=== {label}: {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, cwd=ROOT)
        result = out / label / "compare.json"
        if not result.exists():
            print(f"FAILED: {label} left no {result}", flush=True)
            failed.append(label)
            continue
        figures = json.loads(result.read_text())
        ideals[label] = figures.get("ideal")
        rows += rows_of(label, figures)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, shlex.join(["python3", "scripts/matrix.py", *argv]), ideals)
    (out / "matrix.md").write_text(table)
    with open(out / "matrix.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["scenario", "preset", *(k for k, _ in COLUMNS)])
        writer.writeheader()
        writer.writerows(rows)
    print(table)
    print(json.dumps({"rows": rows, "ideal": ideals, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
