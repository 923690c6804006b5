"""Per-peer JSONL events: writing and reading them.

Each peer appends one JSON object per line to `OUT/peer-<id>.jsonl`, each with `ev` (start, iter, eval, transfer,
change, final), `peer` and `t` (Unix time). The launcher tails these files for live progress and, at the end,
`dlion.analysis.summarize` turns them into `OUT/summary.json`: the summary is a pure function of the event files, so a
run can be re-summarized later. An `EventLog` can mirror its events to sinks (`dlion.tensorboard`: TensorBoard
scalars), each an object with `write(event)` and `close()`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import psutil

LOG = logging.getLogger("dlion.metrics")


def peer_log_path(out_dir: str | Path, peer_id: int) -> Path:
    return Path(out_dir) / f"peer-{peer_id}.jsonl"


class EventLog:
    """Appends events for one peer; each line is flushed so that a killed peer leaves whole lines behind.

    Every event also goes to each of `sinks` (`write(event)`; `close()` with the log). A sink that fails is reported
    once and dropped: the JSONL file, which the summary rests on, and training go on without it."""

    def __init__(self, path: str | Path, peer_id: int, sinks=(), clock=time.time):
        """`clock`: what `t` is read from (a simulation's virtual seconds instead of Unix time)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.peer_id = peer_id
        self.clock = clock
        self._file = open(path, "a", buffering=1)
        self._sinks = list(sinks)
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent()  # first call primes the counter

    def emit(self, ev: str, **fields) -> dict:
        event = {"ev": ev, "peer": self.peer_id, "t": self.clock(), **fields}
        self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
        for sink in list(self._sinks):
            self._to_sink(sink, sink.write, event)
        return event

    def _to_sink(self, sink, call, *args) -> None:
        try:
            call(*args)
        except Exception:  # a mirror must not end a peer's training
            LOG.exception("peer %s: event sink %s failed; its events stop here", self.peer_id, type(sink).__name__)
            self._sinks.remove(sink)

    def resources(self) -> dict:
        """CPU share (1.0 = one core) since the last call and resident memory, for progress events."""
        return {"cpu": round(self._process.cpu_percent() / 100.0, 3),
                "rss_mb": round(self._process.memory_info().rss / 2**20, 1)}

    def close(self) -> None:
        self._file.close()
        for sink in list(self._sinks):
            self._to_sink(sink, sink.close)
        self._sinks.clear()


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
