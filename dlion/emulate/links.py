"""Emulated links inside the transport: a link policy (`dlion.transport.base.LinkPolicy`) that holds each message as
a link of the configured rate and one-way latency would. The fallback method shapes rate and latency this way; the
real method, on kernels without netem, the latency only."""
from __future__ import annotations

import math
import threading


class LinkShaper:
    """One directed link as a serialization queue: a message leaves once the link has finished the ones before it
    and its own bytes, then arrives `latency_s` later. Not thread-safe; `ShapedLinks` serializes calls."""

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


class ShapedLinks:
    """The link policy of emulated links: a `LinkShaper` per shaped destination, the others left as they are.
    Thread-safe: the training thread changes links (`set`) while the transport's sending thread asks `release_at`."""

    def __init__(self):
        self._shapers: dict[int, LinkShaper] = {}
        self._lock = threading.Lock()

    def set(self, dst: int, bandwidth_bps: float | None = None, latency_s: float | None = None) -> None:
        """Shape the link to `dst` from now on. The first call shapes it (None: unlimited rate / no latency); later
        ones change it, None keeping the current value. Messages already handed over keep their times."""
        with self._lock:
            shaper = self._shapers.get(dst) or LinkShaper(math.inf, 0.0)
            shaper.set(bandwidth_bps, latency_s)  # raises on a bad value before a new shaper is kept
            self._shapers[dst] = shaper

    def shaped(self) -> dict[int, tuple[float, float]]:
        """(bandwidth_bps, latency_s) per shaped link."""
        with self._lock:
            return {p: (s.bandwidth_bps, s.latency_s) for p, s in self._shapers.items()}

    def release_at(self, dst: int, nbytes: int, handed_over: float) -> float | None:
        with self._lock:
            shaper = self._shapers.get(dst)
            return None if shaper is None else shaper.release_at(nbytes, handed_over)
