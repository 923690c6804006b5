#!/usr/bin/env python3
"""Crash one peer mid-run and watch it come back: the timeline and the issue-18 checks, from the peers' own events.

    python3 scripts/crash_rejoin.py configs/quickstart.yaml                 # SIGKILL peer 2, restarted after 3 s
    python3 scripts/crash_rejoin.py configs/scenarios/hetero-4.yaml --victim 3 --at-iteration 4 --set preset=full
    python3 scripts/crash_rejoin.py configs/quickstart.yaml --signal stop   # SIGSTOP for 3 s (a vanished host)

`kill`: `dlion run` with `restart: on-failure` (backoff = --down-s) revives the peer, which rejoins at the others'
round from a leading peer's parameters and optimizer state. `stop`: the peer is frozen for --down-s, then woken; the
others' heartbeats notice it, and it finds them again by itself. Prints the timeline (seconds since the crash), the
checks, and one JSON line; exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dlion import config  # noqa: E402
from dlion.metrics import peer_log_path, read_events  # noqa: E402

TRAINING_AGAIN_S = 5.0  # the victim trains at the current round within this long of its transport coming up (or of
                        # being woken)
EVAL_GAP = 0.02         # its first evaluation after rejoining is within this of another peer's


def wait_for(path: Path, predicate, timeout_s: float, run: subprocess.Popen) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and run.poll() is None:
        for event in read_events(path) if path.exists() else []:
            if predicate(event):
                return event
        time.sleep(0.1)
    raise SystemExit(f"crash_rejoin: no matching event in {path} within {timeout_s:g} s (did the run end early?)")


def crash(args, out: Path) -> float:
    """Run the config, hit the victim at the chosen iteration; returns the Unix time of the crash."""
    sets = [f"--set={s}" for s in args.set]
    if args.signal == "kill":
        sets += ["--set=restart.policy=on-failure", f"--set=restart.backoff_s={args.down_s}"]
    began = time.time()  # events before are an earlier run's, until --overwrite clears them
    run = subprocess.Popen([sys.executable, "-m", "dlion", "run", args.config, "--out", str(out), "--overwrite",
                            *sets], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        log = peer_log_path(out, args.victim)
        victim = wait_for(log, lambda e: e["ev"] == "start" and e["t"] > began, 300, run)
        wait_for(log, lambda e: e["ev"] == "iter" and e["t"] > began and e["it"] >= args.at_iteration, 600, run)
        if args.signal == "kill":
            os.kill(victim["pid"], signal.SIGKILL)
            crashed = time.time()
        else:
            os.kill(victim["pid"], signal.SIGSTOP)
            crashed = time.time()
            time.sleep(args.down_s)
            os.kill(victim["pid"], signal.SIGCONT)
        run.wait(timeout=args.timeout_s)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            run.wait(timeout=60)
    return crashed


def noticed(out: Path, peer: int, victim: int, after: float) -> float | None:
    """When `peer`'s console says it lost the connection to `victim` (first time after `after`), as Unix time."""
    needle = f"peer {peer}: lost the connection to peer {victim} "
    for line in (out / f"peer-{peer}.log").read_text(errors="replace").splitlines():
        if needle in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp > after:
                return stamp
    return None


def timeline(cfg, out: Path, victim: int, crashed: float, woken: float | None) -> tuple[list[tuple[float, str]], dict]:
    """What happened, from the events, and the figures the checks judge (`woken`: when a frozen victim got SIGCONT;
    None for a killed one, which is up again when its restarted transport is)."""
    events = {p: read_events(peer_log_path(out, p)) for p in cfg.peer_ids}
    mine = events[victim]
    others = [p for p in cfg.peer_ids if p != victim]
    lines: list[tuple[float, str]] = []
    before = [e for e in mine if e["ev"] == "iter" and e["t"] <= crashed]
    lines.append((0.0, f"peer {victim} hit at iteration {before[-1]['it'] if before else '?'}"))
    for p in others:
        after = [e for e in events[p] if e["ev"] == "iter" and e["t"] > crashed]
        if after:
            lines.append((after[0]["t"] - crashed, f"peer {p} at iteration {after[0]['it']}, longest wait of its "
                                                   f"last rounds {after[0]['max_wait_s']} s"))
    figures: dict = {"victim": victim, "noticed_s": None}
    for p in others:
        lost = noticed(out, p, victim, crashed)
        if lost is not None:
            figures["noticed_s"] = round(max(figures["noticed_s"] or 0.0, lost - crashed), 3)
            lines.append((lost - crashed, f"peer {p} stops waiting for peer {victim} (connection closed, or no "
                                          f"answer to its heartbeat)"))
    starts = [e for e in mine if e["ev"] == "start" and e["t"] > crashed]
    if starts:  # a restarted process (kill)
        up = starts[0]["t"] - starts[0]["barrier_s"]
        lines.append((up - crashed, f"peer {victim} restarted: transport up"))
        lines.append((starts[0]["t"] - crashed, f"peer {victim} through the hello barrier"))
    else:
        up = woken
    if woken is not None:
        lines.append((woken - crashed, f"peer {victim} woken (SIGCONT)"))
    rejoin = next((e for e in mine if e["ev"] == "rejoin" and e["t"] > crashed), None)
    if rejoin:
        lines.append((rejoin["t"] - crashed, f"peer {victim} rejoins at round {rejoin['at']} (was at "
                                             f"{rejoin['was_at']}) with peer {rejoin['asked']}'s parameters"
                                             f"{' and optimizer state' if rejoin.get('optimizer') else ''}, "
                                             f"{'taken' if rejoin['taken'] else 'NOT taken'} after "
                                             f"{rejoin['wait_s']} s"))
    first_iter = next((e for e in mine if e["ev"] == "iter" and rejoin and e["t"] > rejoin["t"]), None)
    if first_iter:
        lines.append((first_iter["t"] - crashed, f"peer {victim} trains: iteration {first_iter['it']}"))
    figures["training_again_s"] = None if first_iter is None or up is None else round(first_iter["t"] - up, 3)
    first_eval = next((e for e in mine if e["ev"] == "eval" and rejoin and e["t"] > rejoin["t"]), None)
    if first_eval:
        theirs = [e["acc"] for p in others for e in events[p] if e["ev"] == "eval" and e["it"] == first_eval["it"]]
        if theirs:  # each peer scores its own held-out samples: the others differ among themselves too
            figures["first_eval_gap_mean"] = round(abs(first_eval["acc"] - sum(theirs) / len(theirs)), 4)
            figures["first_eval_gap_nearest"] = round(min(abs(first_eval["acc"] - a) for a in theirs), 4)
            figures["others_spread"] = round(max(theirs) - min(theirs), 4)
        lines.append((first_eval["t"] - crashed, f"peer {victim} evaluates at iteration {first_eval['it']}: "
                                                 f"{first_eval['acc']:.3f}, the others "
                                                 f"{', '.join(f'{a:.3f}' for a in theirs)}"))
    waits = [e["max_wait_s"] for p in others for e in events[p] if e["ev"] == "iter" and e["t"] > crashed]
    figures["others_longest_wait_s"] = max(waits, default=None)
    finals = {p: next((e for e in reversed(events[p]) if e["ev"] == "final"), None) for p in cfg.peer_ids}
    for p, f in finals.items():
        if f:
            lines.append((f["t"] - crashed, f"peer {p} ends: {f['stop_reason']}, accuracy {f['acc']:.3f}"))
    return sorted(lines), figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--victim", type=int, default=None, help="the peer to hit (default: the last one)")
    parser.add_argument("--at-iteration", type=int, default=5,
                        help="the round to hit it at (full's rounds are 32 optimizer steps each)")
    parser.add_argument("--signal", choices=["kill", "stop"], default="kill")
    parser.add_argument("--down-s", type=float, default=None,
                        help="restart backoff (kill, default 3) or frozen time (stop, default 10: beyond the "
                             "heartbeat timeout)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--out", default="runs/crash-rejoin")
    parser.add_argument("--timeout-s", type=float, default=1200)
    args = parser.parse_args()
    cfg = config.load(args.config, args.set)
    args.victim = cfg.peer_ids[-1] if args.victim is None else args.victim
    if args.down_s is None:
        args.down_s = 3.0 if args.signal == "kill" else 10.0
    out = Path(args.out)
    crashed = crash(args, out)
    woken = crashed + args.down_s if args.signal == "stop" else None
    lines, figures = timeline(cfg, out, args.victim, crashed, woken)
    for t, what in lines:
        print(f"{t:+8.2f} s  {what}")
    summary = json.loads((out / "summary.json").read_text())
    deadline = max(getattr(stage.params, "deadline_s", 0.0) for stage in
                   (cfg.strategies.exchange, cfg.strategies.gossip, cfg.strategies.knowledge))
    checks = {
        f"training at the current round within {TRAINING_AGAIN_S:g} s of its transport coming up (or waking)":
            figures["training_again_s"] is not None and figures["training_again_s"] <= TRAINING_AGAIN_S,
        f"first evaluation after rejoining within {EVAL_GAP * 100:g} points of another peer's":
            figures.get("first_eval_gap_nearest") is not None and figures["first_eval_gap_nearest"] <= EVAL_GAP,
        f"the others never waited more than the deadline ({deadline:g} s) a round":
            figures["others_longest_wait_s"] is not None and figures["others_longest_wait_s"] <= deadline + 0.5,
        "the run reached the target": summary["time_to_target_s"] is not None,
    }
    if args.signal == "stop":
        beat = cfg.transport
        checks[f"every other peer stopped waiting within the heartbeat timeout ({beat.heartbeat_timeout_s:g} s)"] = (
            figures["noticed_s"] is not None and figures["noticed_s"] <= beat.heartbeat_timeout_s + beat.heartbeat_s)
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    print(json.dumps({"config": args.config, "signal": args.signal, "down_s": args.down_s, **figures,
                      "restarts": summary.get("restarts"), "time_to_target_s": summary["time_to_target_s"],
                      "final_accuracy": summary["final_accuracy"], "checks_passed": all(checks.values())}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
