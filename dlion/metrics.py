"""Per-peer JSONL events: writing and reading them.

Each peer appends one JSON object per line to `OUT/peer-<id>.jsonl`, each with `ev` (start, iter, eval, transfer,
change, final), `peer` and `t` (Unix time). The launcher tails these files for live progress and, at the end,
`dlion.analysis.summarize` turns them into `OUT/summary.json`: the summary is a pure function of the event files, so a
run can be re-summarized later.
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
