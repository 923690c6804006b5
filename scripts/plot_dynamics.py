#!/usr/bin/env python3
"""How a run adapted to a change of capacity: per-peer batch sizes and per-link budgets over time.

    python3 scripts/plot_dynamics.py RUN_DIR [--change-at 30] [--tolerance 0.15] [--out FILE.png]

Reads the peers' `iter` events (batch allocation, each peer's measured compute rate, and per outgoing link the
entries sent `k` and the bandwidth estimate) from a `dlion run` output directory. Plots, against seconds since
training start: each peer's batch size next to its fair share of the global batch (proportional to the measured
rates), and each link's budget, the links that a scheduled change touched drawn bold.

The last line is a JSON object: `rebalance_s`, the seconds from the change until every peer's batch size is within
`--tolerance` of its share of the newly measured rates; `held_after` (and `held_before`, from 10 s to the change),
the fraction of progress events at which that holds (the rates are noisy and the allocation follows them a report
later); and per link touched by the schedule its median budget and bandwidth estimate before and after the change
(the first 5 s after it left out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlion import config as configmod  # noqa: E402
from dlion.metrics import peer_log_path, read_events  # noqa: E402

SETTLE_S = 5.0


def load(run_dir: Path):
    cfg = configmod.load(run_dir / "config.yaml")
    events = {p: read_events(peer_log_path(run_dir, p)) for p in cfg.peer_ids}
    t0 = min(e["t"] for evs in events.values() for e in evs if e["ev"] == "start")
    iters = {p: [e for e in evs if e["ev"] == "iter"] for p, evs in events.items()}
    return cfg, t0, iters


def shares(iters: dict, t0: float, global_batch: int) -> list[tuple[float, dict, dict]]:
    """(time, batch per peer, fair share per peer) at each progress event of the lowest peer id, the rates being
    every peer's latest reported at that time."""
    timeline = sorted((e["t"] - t0, p, e) for p, evs in iters.items() for e in evs)
    latest: dict[int, dict] = {}
    out = []
    first = min(iters)
    for t, p, e in timeline:
        latest[p] = e
        if p != first or len(latest) < len(iters) or any(v.get("rate") is None for v in latest.values()):
            continue
        total = sum(v["rate"] for v in latest.values())
        out.append((t, {q: v["batch"] for q, v in latest.items()},
                    {q: global_batch * v["rate"] / total for q, v in latest.items()}))
    return out


def within(batch: dict, fair: dict, tolerance: float) -> bool:
    return all(abs(batch[p] - fair[p]) <= tolerance * fair[p] for p in batch)


def rebalance_s(rows, change_at: float, tolerance: float) -> float | None:
    """Seconds from the change to the first progress event at which every peer's batch is within tolerance of its
    share of the rates measured after the change (the first event at least 1 s after it: the new rates must have
    been measured); None if that never happens."""
    return next((round(t - change_at, 2) for t, batch, fair in rows
                 if t >= change_at + 1.0 and within(batch, fair, tolerance)), None)


def held(rows, since: float, tolerance: float) -> float | None:
    """Fraction of the progress events from `since` on at which every batch was within tolerance of its share."""
    later = [within(batch, fair, tolerance) for t, batch, fair in rows if t >= since]
    return round(sum(later) / len(later), 3) if later else None


def link_series(iters: dict, t0: float, src: int, dst: int) -> list[tuple[float, int, float | None]]:
    return [(e["t"] - t0, e["links"][str(dst)]["k"], e["links"][str(dst)].get("bps"))
            for e in iters[src] if str(dst) in e.get("links", {})]


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--change-at", type=float, help="seconds of the change (default: the schedule's first)")
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/dynamics.png)")
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, t0, iters = load(args.run_dir)
    change_at = args.change_at if args.change_at is not None else min((c.at for c in cfg.schedule), default=None)
    rows = shares(iters, t0, cfg.training.global_batch)
    touched = sorted({(c.src, c.dst) for c in cfg.schedule if c.is_link})
    fig, (ax_b, ax_k) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for p in cfg.peer_ids:
        line, = ax_b.plot([r[0] for r in rows], [r[1][p] for r in rows], label=f"peer {p} batch")
        ax_b.plot([r[0] for r in rows], [r[2][p] for r in rows], ls=":", color=line.get_color(),
                  label=f"peer {p} share of measured rates")
    ax_b.set(ylabel="samples per iteration", title=f"{cfg.name}: batch sizes follow the measured rates")
    ax_b.legend(fontsize=7, ncol=2)
    links = {}
    for src in cfg.peer_ids:
        for dst in cfg.destinations(src):
            series = link_series(iters, t0, src, dst)
            if not series:
                continue
            bold = (src, dst) in touched
            ax_k.plot([s[0] for s in series], [s[1] for s in series], lw=2.5 if bold else 0.8,
                      alpha=1.0 if bold else 0.5, label=f"{src}->{dst}" + (" (changed)" if bold else ""))
            if bold and change_at is not None:
                before = [s for s in series if s[0] < change_at]
                after = [s for s in series if s[0] >= change_at + SETTLE_S]
                links[f"{src}->{dst}"] = {
                    "budget_before": _median(s[1] for s in before), "budget_after": _median(s[1] for s in after),
                    "bps_before": _median(s[2] for s in before), "bps_after": _median(s[2] for s in after)}
    ax_k.set(xlabel="seconds since training start", ylabel="entries sent per iteration (budget)", yscale="log",
             title="per-link budgets")
    ax_k.legend(fontsize=7, ncol=3)
    if change_at is not None:
        for ax in (ax_b, ax_k):
            ax.axvline(change_at, color="k", ls="--", lw=0.8)
    fig.tight_layout()
    out = args.out or args.run_dir / "dynamics.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    settled = rebalance_s(rows, change_at, args.tolerance) if change_at is not None else None
    result = {"run": str(args.run_dir), "change_at_s": change_at, "tolerance": args.tolerance,
              "rebalance_s": settled,
              "held_after": held(rows, change_at + settled, args.tolerance) if settled is not None else None,
              "held_before": held([r for r in rows if r[0] < change_at], 10.0, args.tolerance)
              if change_at is not None else None, "links": links}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
