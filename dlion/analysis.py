"""Analysis of finished runs: accuracy curves, values at equal training time, and figures aggregated over repeats.

Everything here is a pure function of a run's output directory (its `summary.json` and the peers' JSONL events) or
of figures already taken from one, so that the run summary, `scripts/compare.py` and the tests compute the same
figures the same way, and a finished run can be analysed again later.
"""
from __future__ import annotations

import bisect
import json
import statistics
from pathlib import Path

from dlion.metrics import peer_log_path, read_events

PLANES = {"grad": ("grad",), "model": ("model", "gossip")}  # wire kinds per plane: gradients; parameters (knowledge
# transfer and gossip)
DIGITS = {"time_to_target_s": 3, "final_accuracy": 5, "worst_final_accuracy": 5, "samples_per_s": 1,
          "grad_bytes_per_iter": 1, "model_bytes_per_iter": 1, "bytes_per_peer_iter": 1, "bytes_total": 0, "accuracy_at_equal_time": 5,
          "equal_time_s": 3}


def accuracy_curve(evals: list[dict], peer_ids, t0: float) -> list[tuple[float, float]]:
    """(training seconds, mean over peers of each one's latest evaluation-subset accuracy) at every evaluation from
    the one at which every peer has reported.

    Training seconds leave out the evaluation pauses (`train_s` of an eval event: time since training start minus
    the time the peer spent evaluating before it), so presets that iterate at very different speeds, and therefore
    evaluate at very different rates, are timed alike; events without it fall back to their time since `t0`.
    """
    latest: dict[int, float] = {}
    curve = []
    for e in sorted(evals, key=lambda e: e["t"]):
        latest[e["peer"]] = e["acc"]
        if len(latest) == len(peer_ids):
            curve.append((e.get("train_s", e["t"] - t0), sum(latest.values()) / len(latest)))
    return curve


def time_to_target(evals: list[dict], peer_ids, target: float | None, t0: float) -> float | None:
    """Training seconds (evaluation pauses left out) until the mean of each peer's latest evaluation figure
    (`accuracy_curve`) first reached the target, what the stop rule judges (`dlion.control`); None if it never did."""
    if target is None:
        return None
    reached = next((t for t, acc in accuracy_curve(evals, peer_ids, t0) if acc >= target), None)
    return None if reached is None else round(reached, 3)


def value_at(curve: list[tuple[float, float]], t: float) -> float | None:
    """The stepwise curve's value at time t (None before its first point)."""
    i = bisect.bisect_right([p[0] for p in curve], t)
    return curve[i - 1][1] if i else None


def equal_time(curves: list[list[tuple[float, float]]]) -> float | None:
    """The latest time every curve reached (its last point); None if there are none or one is empty."""
    if not curves or not all(curves):
        return None
    return min(c[-1][0] for c in curves)


def mean_curve(curves: list[list[tuple[float, float]]]) -> tuple[list[float], list[float]]:
    """Mean of stepwise curves, exact (at every point of any of them) where all have values."""
    if not curves or not all(curves):
        return [], []
    start, end = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    grid = sorted({t for c in curves for t, _ in c if start <= t <= end})
    return grid, [sum(value_at(c, t) for c in curves) / len(curves) for t in grid]


def accuracy_by_bytes(events: list[dict], peer_ids) -> list[tuple[float, float]]:
    """(bytes sent so far by all peers, the peers' mean evaluation accuracy) at every point of the accuracy curve.

    A peer's bytes are those of its latest progress event (`iter`) before the evaluation, added up over the processes
    it ran in (the counters of a resumed peer start again from zero)."""
    latest: dict[int, float] = {}
    sent: dict[int, int] = {}  # per peer: bytes_sent of its latest iter event in its current process
    before: dict[int, int] = {}  # per peer: bytes its earlier processes sent
    curve = []
    for e in sorted(events, key=lambda e: e["t"]):
        peer = e["peer"]
        if e["ev"] == "start":
            before[peer] = before.get(peer, 0) + sent.pop(peer, 0)
        elif e["ev"] == "iter" and e.get("bytes_sent") is not None:
            sent[peer] = e["bytes_sent"]
        elif e["ev"] == "eval":
            latest[peer] = e["acc"]
            if len(latest) == len(peer_ids):
                curve.append((float(sum(before.values()) + sum(sent.values())), sum(latest.values()) / len(latest)))
    return curve


def loss_curves(events: list[dict]) -> dict[int, list[tuple[float, float]]]:
    """Per peer, (training seconds, mean training loss of its `iter` event), on the accuracy curve's clock (evaluation
    pauses left out): an iter event's time is the `train_s` of the peer's latest evaluation before it plus the wall
    time since; before its first one, the wall time since the peer started (a resumed peer: since it started again,
    counted from its latest evaluation at or before the iteration it resumed from)."""
    anchor: dict[int, tuple[float, float]] = {}  # peer -> (wall time, training seconds at that time)
    evaluated: dict[int, list[tuple[int, float]]] = {}  # peer -> (iteration, train_s) of its evaluations
    curves: dict[int, list[tuple[float, float]]] = {}
    for e in sorted(events, key=lambda e: e["t"]):
        peer = e["peer"]
        if e["ev"] == "start":
            resumed = e.get("resumed_from")
            anchor[peer] = (e["t"], 0.0 if resumed is None else max(
                (s for it, s in evaluated.get(peer, []) if it <= resumed), default=0.0))
        elif e["ev"] == "eval" and e.get("train_s") is not None:
            anchor[peer] = (e["t"], e["train_s"])
            evaluated.setdefault(peer, []).append((e.get("it", 0), e["train_s"]))
        elif e["ev"] == "iter" and e.get("loss") is not None and peer in anchor:
            t, train_s = anchor[peer]
            curves.setdefault(peer, []).append((round(train_s + e["t"] - t, 3), e["loss"]))
    return curves


def load_run(path: Path, summary: dict | None = None) -> dict:
    """A run's summary (its `summary.json` unless given), its accuracy curve (`accuracy_curve`), its accuracy against
    the bytes sent (`bytes_curve`: `accuracy_by_bytes`) and each peer's loss (`loss`: `loss_curves`)."""
    if summary is None:
        summary = json.loads((Path(path) / "summary.json").read_text())
    events = [e for pid in summary["peers"] for e in read_events(peer_log_path(path, int(pid)))]
    t0 = min((e["t"] for e in events if e["ev"] == "start"), default=0.0)
    curve = accuracy_curve([e for e in events if e["ev"] == "eval"], summary["peers"], t0)
    return {"summary": summary, "curve": curve, "bytes_curve": accuracy_by_bytes(events, summary["peers"]),
            "loss": loss_curves(events)}


def bytes_per_iteration(summary: dict) -> dict:
    """Bytes sent per peer-iteration (an optimizer step: a round of H local steps counts H), by plane (message kinds)
    and in all ("all": every byte a peer sent, control included), over all peers; `missing`: some peer had no
    per-kind counts."""
    peers = summary["peers"].values()
    iterations = sum(p.get("steps") or p.get("iterations") or 0 for p in peers)
    by_kind = [p.get("bytes_by_kind") for p in peers]
    figures = {plane: sum((b or {}).get(k, 0) for b in by_kind for k in kinds) / iterations if iterations else None
               for plane, kinds in PLANES.items()}
    total = sum(p.get("bytes_sent") or 0 for p in peers) / iterations if iterations else None
    return {**figures, "all": total, "missing": None in by_kind}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def aggregate(runs: list[dict], t_equal: float | None, failed: int = 0) -> dict:
    """One preset's figures over its successful runs (`load_run` results), as scripts/compare.py's docstring defines
    them."""
    summaries = [r["summary"] for r in runs]
    reached = [s["time_to_target_s"] for s in summaries if s.get("time_to_target_s") is not None]
    per_iter = [bytes_per_iteration(s) for s in summaries]
    at_equal = [value_at(r["curve"], t_equal) for r in runs] if t_equal is not None else []
    figures = {
        "time_to_target_s": statistics.median(reached) if reached and 2 * len(reached) >= len(runs) else None,
        "final_accuracy": _mean(s.get("final_accuracy") for s in summaries),
        "worst_final_accuracy": min((s["worst_final_accuracy"] for s in summaries
                                     if s.get("worst_final_accuracy") is not None), default=None),
        "samples_per_s": _mean(sum(p.get("samples_per_s") or 0 for p in s["peers"].values()) for s in summaries),
        "grad_bytes_per_iter": _mean(b["grad"] for b in per_iter),
        "model_bytes_per_iter": _mean(b["model"] for b in per_iter),
        "bytes_per_peer_iter": _mean(b["all"] for b in per_iter),
        "bytes_total": _mean(s.get("bytes_sent_total") for s in summaries),
        "repeats": len(runs),
        "accuracy_at_equal_time": _mean(at_equal) if at_equal and None not in at_equal else None,
        "equal_time_s": t_equal,
        "reached_target": len(reached),
        "failed": failed,
        "runs_without_bytes_by_kind": sum(b["missing"] for b in per_iter),
    }
    return {k: v if k not in DIGITS or v is None else round(v, DIGITS[k]) if DIGITS[k] else round(v)
            for k, v in figures.items()}


def summarize(out_dir: str | Path, peer_ids, target: float | None, wall_s: float | None = None) -> dict:
    """The run summary from the peers' JSONL files (peers that died without a final event count as unfinished)."""
    peer_ids = sorted(peer_ids)
    per_peer, evals, starts, finals, methods = {}, [], [], [], set()
    for pid in peer_ids:
        events = read_events(peer_log_path(out_dir, pid))
        start = next((e for e in events if e["ev"] == "start"), None)
        final = next((e for e in reversed(events) if e["ev"] == "final"), None)  # a resumed run's is the last
        last_iter = next((e for e in reversed(events) if e["ev"] == "iter"), None)
        evals += [e for e in events if e["ev"] == "eval"]
        if start:
            starts.append(start["t"])
            methods.add(start.get("emulation"))
        source = final or last_iter or {}
        per_peer[str(pid)] = {
            "finished": final is not None,
            "iterations": source.get("it", 0),
            "steps": source.get("steps", source.get("it", 0)),
            "samples": source.get("samples", 0),
            "samples_per_s": source.get("samples_per_s"),
            "train_s": final.get("train_s") if final else None,
            "final_accuracy": final.get("acc") if final else None,
            "bytes_sent": source.get("bytes_sent", 0),
            "bytes_received": source.get("bytes_received", 0),
            "bytes_by_kind": final.get("bytes_by_kind", {}) if final else {},
            "messages_dropped": source.get("messages_dropped", 0),
            "stop_reason": final.get("stop_reason") if final else "died",
        }
        if final:
            finals.append(final["acc"])
    t0 = min(starts) if starts else 0.0
    train_s = max((p["train_s"] for p in per_peer.values() if p["train_s"] is not None), default=None)
    return {
        "emulation": next(iter(methods), None),
        "wall_s": None if wall_s is None else round(wall_s, 3),
        "train_s": train_s,
        "nontraining_s": None if wall_s is None or train_s is None else round(wall_s - train_s, 3),
        "target_accuracy": target,
        "time_to_target_s": time_to_target(evals, peer_ids, target, t0),
        "final_accuracy": round(sum(finals) / len(finals), 5) if finals else None,
        "worst_final_accuracy": min(finals) if finals else None,
        "bytes_sent_total": sum(p["bytes_sent"] for p in per_peer.values()),
        "peers_finished": sum(p["finished"] for p in per_peer.values()),
        "peers": per_peer,
    }
