"""`dlion report RUN_DIR [RUN_DIR ...] [-o OUT]`: a table and plots of runs that already exist, without running them.

A run directory is what `dlion run` writes (`peer-<id>.jsonl`, and usually `summary.json` and `config.yaml`); a
directory holding no `peer-*.jsonl` but run directories one level down (as `scripts/compare.py` leaves under
`DIR/runs`) stands for those. A run without `summary.json` (killed, or peers started by hand) is summarized from its
events, as `dlion run` would have (`dlion.analysis.summarize`); `--target ACC` re-times every run against that
target. Every figure is `dlion.analysis`'s, one run per row as `aggregate` gives it for one repeat:

- time to target: training seconds (evaluation pauses left out) until the peers' mean evaluation-subset accuracy
  first reached the run's target; accuracy at a time: that mean at the latest training time every run reached;
- final and worst-peer accuracy on the full test set; samples/s summed over the peers; bytes sent per
  peer-iteration, by plane and in all.

OUT (default `report`) gets `report.md` and `report.csv` (the table), `accuracy_time.png` (mean evaluation accuracy
against training time), `accuracy_bytes.png` (the same against the bytes all peers sent) and `loss_time.png` (each
peer's training loss against its training time). The plots need matplotlib (the `bench` extra).

The table, CSV and accuracy plot functions are also `scripts/compare.py`'s, for its presets side by side.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import yaml

from dlion.analysis import aggregate, equal_time, load_run, mean_curve, summarize

COLUMNS = [  # (figure, markdown header; {t} is the equal time)
    ("preset", "preset"),
    ("peers", "peers finished"),
    ("target_accuracy", "target"),
    ("time_to_target_s", "time to target (s)"),
    ("final_accuracy", "final accuracy (mean)"),
    ("worst_final_accuracy", "worst peer final accuracy"),
    ("accuracy_at_equal_time", "accuracy at {t}"),
    ("train_s", "training time (s)"),
    ("samples_per_s", "samples/s (all peers)"),
    ("grad_bytes_per_iter", "grad bytes/iter"),
    ("model_bytes_per_iter", "model bytes/iter"),
    ("bytes_per_peer_iter", "bytes/peer-iter (all)"),
    ("bytes_total", "bytes sent"),
]
PER_REPEAT = ("repeats", "failed", "reached_target")  # aggregate's figures that mean nothing for one run
PLOTS = ("accuracy_time.png", "accuracy_bytes.png", "loss_time.png")
_PEER_LOG = re.compile(r"peer-(\d+)\.jsonl$")


class ReportError(Exception):
    """Something the user can fix: a directory that is not a run, a summary that cannot be read."""


class NoPlots(ReportError):
    """matplotlib is missing."""


# ---- tables (also scripts/compare.py's) ------------------------------------------------------------------------------

def cell(key: str, value) -> str:
    """A figure as the tables show it: "-" for none, thousands separators for bytes, 4 digits for accuracies."""
    if value is None:
        return "-"
    if key.endswith("_bytes_per_iter") or key in ("bytes_total", "bytes_per_peer_iter"):
        return f"{value:,.0f}"
    if key.startswith("x_"):
        return f"{value:.2f}x"
    if "accuracy" in key:
        return f"{value:.4f}"
    if key in ("time_to_target_s", "train_s", "wall_s"):
        return f"{value:.1f}"
    if key == "samples_per_s":
        return f"{value:.0f}"
    return str(value)


def table(label: str, figures: dict[str, dict], columns: list[tuple[str, str]], t_equal: float | None) -> list[str]:
    """Markdown table lines: one row per entry of `figures` (first column headed `label`), a column per
    (figure, header) of `columns`."""
    headers = [h.format(t=f"{t_equal:.1f} s" if t_equal is not None else "equal time") for _, h in columns]
    lines = [f"| {label} | " + " | ".join(headers) + " |", "|---" * (len(columns) + 1) + "|"]
    return lines + [f"| {name} | " + " | ".join(cell(k, f.get(k)) for k, _ in columns) + " |"
                    for name, f in figures.items()]


def write_csv(path: Path, figures: dict[str, dict], label: str) -> None:
    """Every figure of every row (empty for none), the first column headed `label`."""
    keys = list(next(iter(figures.values()), {}))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([label, *keys])
        for name, fig in figures.items():
            writer.writerow([name, *("" if fig[k] is None else fig[k] for k in keys)])


# ---- plots (matplotlib, imported when a plot is drawn) ---------------------------------------------------------------

def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise NoPlots("the plots need matplotlib, which is not installed: pip install matplotlib (or "
                          "pip install -e '.[bench]')") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finish(fig, ax, path: Path, title: str, xlabel: str, ylabel: str, legend: str = "best") -> None:
    plt = _pyplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=legend)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_accuracy(curves: dict[str, list[list]], target: float | None, t_equal: float | None, path: Path,
                  title: str, counts: bool = True) -> None:
    """Mean evaluation accuracy against training time (evaluation pauses left out), per entry of `curves` (a list of
    repeats' curves): each repeat faint, their mean bold (labelled with the number of repeats if `counts`), the
    target dashed, the equal time dotted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, runs) in enumerate(curves.items()):
        for curve in filter(None, runs):
            ax.step(*zip(*curve), where="post", color=f"C{i}", alpha=0.3, linewidth=0.8)
        grid, mean = mean_curve(runs)
        if grid:
            ax.step(grid, mean, where="post", color=f"C{i}", linewidth=2,
                    label=f"{name} (n={len(runs)})" if counts else name)
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}")
    if t_equal is not None:
        ax.axvline(t_equal, color="gray", linestyle=":", linewidth=1, label=f"equal time {t_equal:.1f} s")
    _finish(fig, ax, path, title, "training time, evaluation pauses left out (s)", "mean evaluation accuracy",
            legend="lower right")


def plot_accuracy_bytes(curves: dict[str, list[tuple[float, float]]], target: float | None, path: Path,
                        title: str) -> None:
    """Mean evaluation accuracy against the megabytes all peers had sent, one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, curve) in enumerate(curves.items()):
        if curve:
            ax.step([b / 1e6 for b, _ in curve], [a for _, a in curve], where="post", color=f"C{i}", linewidth=1.5,
                    label=name)
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}")
    _finish(fig, ax, path, title, "bytes sent by all peers (MB)", "mean evaluation accuracy")


def plot_loss(losses: dict[str, dict[int, list[tuple[float, float]]]], path: Path, title: str) -> None:
    """Each peer's training loss (the mean between progress events) against its training time, a colour per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, peers) in enumerate(losses.items()):
        for n, (peer, curve) in enumerate(sorted(peers.items())):
            ax.plot(*zip(*curve), color=f"C{i}", linewidth=1, alpha=0.7,
                    label=f"{name} ({len(peers)} peers)" if n == 0 else None)
    _finish(fig, ax, path, title, "training time, evaluation pauses left out (s)", "training loss")


# ---- runs ------------------------------------------------------------------------------------------------------------

def _peer_ids(path: Path) -> list[int]:
    return sorted(int(m.group(1)) for f in path.glob("peer-*.jsonl") if (m := _PEER_LOG.match(f.name)))


def find_runs(paths) -> list[Path]:
    """The run directories of `paths`: each one itself if it holds peer-*.jsonl, else its subdirectories that do."""
    runs = []
    for given in map(Path, paths):
        if not given.is_dir():
            raise ReportError(f"{given}: no such directory")
        found = [given] if _peer_ids(given) else sorted(d for d in given.iterdir() if d.is_dir() and _peer_ids(d))
        if not found:
            raise ReportError(f"{given}: not a run directory (no peer-*.jsonl in it or in its subdirectories)")
        runs += [r for r in found if r.resolve() not in {k.resolve() for k in runs}]
    return runs


def _config(path: Path) -> dict:
    """The run's resolved config (`config.yaml`, as `dlion run` writes it), or {} without one."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def load(path: Path, target: float | None = None) -> dict:
    """`dlion.analysis.load_run` of a run directory, with its preset; the summary is summarized from the events where
    there is no summary.json, or against `target` where one is given."""
    config = _config(path)
    summary_file = path / "summary.json"
    try:
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{summary_file}: cannot be read ({exc})") from exc
    if summary is None or target is not None:
        if target is None:
            target = (config.get("training") or {}).get("target_accuracy")
        summary = summarize(path, _peer_ids(path), target, (summary or {}).get("wall_s"))
    run = load_run(path, summary)
    run["preset"] = config.get("preset")
    return run


def labels(runs: list[Path]) -> list[str]:
    """Each run's directory name, or where two share a name, each run's path below the runs' common directory."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    common = os.path.commonpath([r.resolve() for r in runs])
    return [str(r.resolve().relative_to(common)) or r.name for r in runs]


def figures(runs: dict[str, dict]) -> tuple[dict[str, dict], float | None]:
    """Per run, its row of the table (`aggregate` of it alone, and its preset, peers and training time); and the
    equal time (the latest training time every run with an accuracy curve reached)."""
    t_equal = equal_time([r["curve"] for r in runs.values() if r["curve"]])
    rows = {}
    for name, run in runs.items():
        s = run["summary"]
        finished = s.get("peers_finished", sum(bool(p.get("finished")) for p in s["peers"].values()))
        rows[name] = {"preset": run.get("preset"), "peers": f"{finished}/{len(s['peers'])}",
                      "target_accuracy": s.get("target_accuracy"), "train_s": s.get("train_s"),
                      "wall_s": s.get("wall_s"),
                      **{k: v for k, v in aggregate([run], t_equal).items() if k not in PER_REPEAT}}
    return rows, t_equal


def markdown(rows: dict[str, dict], t_equal: float | None, command: str, plots: list[str]) -> str:
    lines = [f"# dlion report: {len(rows)} run(s)", "", f"`{command}`", "", *table("run", rows, COLUMNS, t_equal), "",
             "Time to target: training seconds (evaluation pauses left out) until the peers' mean evaluation-subset "
             "accuracy first reached the run's target. Accuracy at a time: the peers' mean of their latest "
             "evaluation-subset accuracy, at the latest training time every run reached. Final accuracies: the full "
             "test set. Bytes per iteration: bytes the peers sent over the iterations summed over peers."]
    missing = [name for name, r in rows.items() if r.get("runs_without_bytes_by_kind")]
    if missing:
        lines += ["", f"Without per-kind byte counts (`bytes_by_kind`; grad and model bytes count as 0): "
                      f"{', '.join(missing)}."]
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots) + "."]
    return "\n".join(lines) + "\n"


def _title(names: list[str]) -> str:
    title = ", ".join(names)
    return title if len(title) <= 80 else f"{len(names)} runs"


def write(paths, out: str | Path, target: float | None = None, plots: bool = True,
          command: str = "dlion report") -> tuple[str, list[Path]]:
    """The report of the runs of `paths` in `out`: (its markdown, the files written). Without matplotlib the table
    and CSV are still written, and then NoPlots is raised."""
    found = find_runs(paths)
    runs = dict(zip(labels(found), (load(r, target) for r in found)))
    rows, t_equal = figures(runs)
    missing = None
    if plots:
        try:
            _pyplot()
        except NoPlots as exc:
            plots, missing = False, exc
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, t_equal, command, list(PLOTS) if plots else [])
    written = [out / "report.md", out / "report.csv"]
    written[0].write_text(text)
    write_csv(written[1], rows, "run")
    if plots:
        targets = {r["summary"].get("target_accuracy") for r in runs.values()}
        common = targets.pop() if len(targets) == 1 else None
        title = _title(list(runs))
        plot_accuracy({n: [r["curve"]] for n, r in runs.items()}, common, t_equal, out / PLOTS[0], title,
                      counts=False)
        plot_accuracy_bytes({n: r["bytes_curve"] for n, r in runs.items()}, common, out / PLOTS[1], title)
        plot_loss({n: r["loss"] for n, r in runs.items()}, out / PLOTS[2], title)
        written += [out / p for p in PLOTS]
    if missing:
        raise missing
    return text, written


def main(args, command: str = "dlion report") -> int:
    """`dlion report` (args: runs, output, target, no_plots): 0; 2 for runs it cannot read (nothing written); 1 when
    the plots could not be drawn (the table and CSV are written)."""
    if args.target is not None and not 0.0 <= args.target <= 1.0:
        print(f"dlion: report error: --target: expected an accuracy in [0, 1], got {args.target}", file=sys.stderr)
        return 2
    out = Path(args.output)
    try:
        text, written = write(args.runs, out, args.target, not args.no_plots, command)
    except NoPlots as exc:
        print(f"dlion: report: wrote {out / 'report.md'} and {out / 'report.csv'}, but no plots: {exc}",
              file=sys.stderr)
        return 1
    except ReportError as exc:
        print(f"dlion: report error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print("wrote " + ", ".join(map(str, written)))
    return 0
