"""Per-peer JSONL events and the run summary computed from them.

Each peer appends one JSON object per line to `OUT/peer-<id>.jsonl`, each with `ev` (start, iter, eval, transfer,
change, final), `peer`
and `t` (Unix time). The launcher tails these files for live progress and, at the end, `summarize()` turns them into
`OUT/summary.json`. Keeping the summary a pure function of the event files means a run can be re-summarized later.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil


def peer_log_path(out_dir: str | Path, peer_id: int) -> Path:
    return Path(out_dir) / f"peer-{peer_id}.jsonl"


class EventLog:
    """Appends events for one peer; each line is flushed so that a killed peer leaves whole lines behind."""

    def __init__(self, path: str | Path, peer_id: int):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.peer_id = peer_id
        self._file = open(path, "a", buffering=1)
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent()  # first call primes the counter

    def emit(self, ev: str, **fields) -> dict:
        event = {"ev": ev, "peer": self.peer_id, "t": time.time(), **fields}
        self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
        return event

    def resources(self) -> dict:
        """CPU share (1.0 = one core) since the last call and resident memory, for progress events."""
        return {"cpu": round(self._process.cpu_percent() / 100.0, 3),
                "rss_mb": round(self._process.memory_info().rss / 2**20, 1)}

    def close(self) -> None:
        self._file.close()


def read_events(path: str | Path) -> list[dict]:
    """Events of one peer; a torn last line (peer killed mid-write) is ignored."""
    events = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return events


def summarize(out_dir: str | Path, peer_ids, target: float | None, wall_s: float | None = None) -> dict:
    """The run summary from the peers' JSONL files (peers that died without a final event count as unfinished)."""
    from dlion.analysis import time_to_target  # not at the top: dlion.analysis reads run files through this module

    peer_ids = sorted(peer_ids)
    per_peer, evals, starts, finals, methods = {}, [], [], [], set()
    for pid in peer_ids:
        events = read_events(peer_log_path(out_dir, pid))
        start = next((e for e in events if e["ev"] == "start"), None)
        final = next((e for e in events if e["ev"] == "final"), None)
        last_iter = next((e for e in reversed(events) if e["ev"] == "iter"), None)
        evals += [e for e in events if e["ev"] == "eval"]
        if start:
            starts.append(start["t"])
            methods.add(start.get("emulation"))
        source = final or last_iter or {}
        per_peer[str(pid)] = {
            "finished": final is not None,
            "iterations": source.get("it", 0),
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
