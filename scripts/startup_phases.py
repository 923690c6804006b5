"""Where a `dlion run`'s wall time goes outside training: start-up until each peer's `start` event, and the tail from
its `final` event to the launcher's end.

    python3 scripts/startup_phases.py configs/scenarios/hetero-4.yaml --set preset=full --repeats 2

Each repeat is a whole `dlion run` (in this process, as `dlion run` does it), so the figures are the ones its summary
reports: `nontraining_s` is wall time minus the longest training time of any peer.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dlion import config, launch
from dlion.metrics import peer_log_path, read_events


def one_run(cfg: config.Config, out_dir: Path) -> dict:
    began = time.time()
    summary = launch.run(cfg, out_dir, stream=io.StringIO(), overwrite=True)
    ended = time.time()
    starts, finals = [], []
    for peer_id in cfg.peer_ids:
        events = read_events(peer_log_path(out_dir, peer_id))
        starts += [e["t"] for e in events if e["ev"] == "start"][:1]
        finals += [e["t"] for e in events if e["ev"] == "final"][-1:]
    return {"wall_s": summary["wall_s"], "train_s": summary["train_s"], "nontraining_s": summary["nontraining_s"],
            "last_start_s": round(max(starts) - began, 2), "after_last_final_s": round(ended - max(finals), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", help="runs go to OUT/r1, OUT/r2, ... (default: a temporary directory)")
    args = parser.parse_args(argv)
    cfg = config.load(args.config, args.set)
    out = Path(args.out or tempfile.mkdtemp(prefix="dlion-startup-"))
    rows = []
    for r in range(1, args.repeats + 1):
        row = one_run(cfg, out / f"r{r}")
        rows.append(row)
        print(f"r{r}: " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    if len(rows) > 1:
        print("median: " + "  ".join(f"{k} {statistics.median(r[k] for r in rows):.2f}" for k in rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
