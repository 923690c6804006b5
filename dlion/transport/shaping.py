"""Messages held back until their release time (see `base.LinkPolicy`): the transports' side of an emulated link."""
from __future__ import annotations

import heapq
import itertools
from typing import Any


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
