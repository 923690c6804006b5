"""Per-link bandwidth and latency emulation inside the transport: the fallback when `tc netem` (root) is not
available. Pure bookkeeping; the transports hold each message until the time computed here."""
from __future__ import annotations

import heapq
import itertools
import math
from typing import Any


class LinkShaper:
    """One directed link as a serialization queue: a message leaves once the link has finished the ones before it
    and its own bytes, then arrives `latency_s` later. Not thread-safe; the transport serializes calls."""

    def __init__(self, bandwidth_bps: float, latency_s: float):
        self.bandwidth_bps = self.latency_s = 0.0
        self.busy_until = self._last_release = -math.inf
        self.set(bandwidth_bps, latency_s)

    def set(self, bandwidth_bps: float | None = None, latency_s: float | None = None) -> None:
        """Change rate and/or latency for messages handed over from now on; None keeps the current value,
        `math.inf` bandwidth means no serialization delay."""
        if bandwidth_bps is not None and not bandwidth_bps > 0:
            raise ValueError(f"bandwidth_bps must be > 0, got {bandwidth_bps}")
        if latency_s is not None and not 0 <= latency_s < math.inf:
            raise ValueError(f"latency_s must be finite and >= 0, got {latency_s}")
        if bandwidth_bps is not None:
            self.bandwidth_bps = float(bandwidth_bps)
        if latency_s is not None:
            self.latency_s = float(latency_s)

    def release_at(self, nbytes: int, now: float) -> float:
        """When a message of `nbytes` handed over at `now` should go on the wire (monotonic time). Never before an
        earlier message of this link, even after a latency cut: one link is one ordered stream, as TCP."""
        depart = max(now, self.busy_until) + nbytes * 8 / self.bandwidth_bps
        self.busy_until = depart
        self._last_release = max(depart + self.latency_s, self._last_release)
        return self._last_release

    def backlog_s(self, now: float) -> float:
        """Seconds of queued bytes still to serialize: how congested the emulated link is."""
        return max(0.0, self.busy_until - now)


class Holdback:
    """Messages waiting for their release time, earliest first; equal times keep their hand-over order.
    Not thread-safe."""

    def __init__(self):
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, release: float, item: Any) -> None:
        heapq.heappush(self._heap, (release, next(self._seq), item))

    def next_release(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list:
        """The items whose release time has come, in release order."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def drain(self) -> list:
        """Everything still held (at close: these are lost)."""
        items = [entry[2] for entry in sorted(self._heap)]
        self._heap.clear()
        return items
