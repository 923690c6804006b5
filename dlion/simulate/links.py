"""When a simulated message arrives: its link's rate and latency from the config, and the queue it waits in.

A message of B bytes sent at virtual time t on a link of R bit/s and one-way latency L arrives at

    max(t, free_at) + 8 B / R + L,   and free_at becomes max(t, free_at) + 8 B / R

where free_at is when its queue finished the messages before it. Which queue: `link` (the default) gives every
directed link its own, as both emulation methods do (the real method's HTB class per destination, the fallback's
`dlion.emulate.links.LinkShaper`, which is reused here), so simulated and emulated runs of a config agree; `uplink`
gives each sender one queue for all its messages (a shared access link), each taking its own link's rate. Rate and
latency are the config's at the time of sending (`Config.link`, scheduled changes included), and a link never
delivers out of order (with `uplink`, a sender's messages arrive in the order sent, whatever their latencies).
"""
from __future__ import annotations

from typing import Literal

from dlion.config import Config
from dlion.emulate.links import LinkShaper

QUEUES = ("link", "uplink")


class SimLinks:
    """Arrival times of messages on the config's links; `queue` is "link" or "uplink" (module docstring)."""

    def __init__(self, cfg: Config, queue: Literal["link", "uplink"] = "link"):
        if queue not in QUEUES:
            raise ValueError(f"queue must be one of {QUEUES}, got {queue!r}")
        self.cfg = cfg
        self.queue = queue
        self._changing = any(c.is_link for c in cfg.schedule)
        self._specs: dict[tuple[int, int], tuple[float, float]] = {}
        self._shapers: dict[object, LinkShaper] = {}

    def spec(self, src: int, dst: int, at: float) -> tuple[float, float]:
        """(bandwidth bit/s, latency s) of the link src -> dst at virtual time `at`."""
        key = (src, dst)
        if self._changing or key not in self._specs:
            link = self.cfg.link(src, dst, at=at)
            self._specs[key] = (link.bandwidth, link.latency)
        return self._specs[key]

    def arrival(self, src: int, dst: int, nbytes: int, sent: float) -> float:
        """When a message of `nbytes` handed over at `sent` is all there."""
        bandwidth, latency = self.spec(src, dst, sent)
        key = (src, dst) if self.queue == "link" else src
        shaper = self._shapers.get(key)
        if shaper is None:
            shaper = self._shapers[key] = LinkShaper(bandwidth, latency)
        else:
            shaper.set(bandwidth, latency)  # an uplink's messages each take their own link's rate
        return shaper.release_at(nbytes, sent)
