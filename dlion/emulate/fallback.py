"""The emulation method that needs no privileges: it runs inside each peer process.

Links: every outgoing link is shaped in the transport (a serialization queue at the link's rate plus its one-way
latency, see `dlion.transport.shaping`). Compute: like a CFS quota, the peer may use `cores` CPU-seconds per second
while it computes: after a gradient computation that used `c` CPU-seconds (all threads) in `w` seconds of wall time,
it sleeps `c / cores - w`. Capping CPU time rather than stretching wall time keeps the share right when the machine
is contended (a step slowed down by other peers used less CPU, so it owes less idling). The config's schedule is
applied as training time passes: `update(elapsed)` is called every iteration.

With `latency_only`, only the links' one-way latency is emulated here: the real method shapes bandwidth and CPU in
the kernel, and on kernels without netem the peers add the latency themselves.
"""
from __future__ import annotations

import time

from dlion.config import Config

def in_process(cfg: Config, peer_id: int, transport) -> "FallbackEmulation | None":
    """What a peer itself must emulate: everything under `fallback` (and `auto`, which the launcher resolves before
    starting peers, so a lone peer can only mean the in-process method); only the latency under `real` where the
    kernel has no netem (`transport_latency`); nothing otherwise."""
    method = cfg.emulation.method
    if method in ("fallback", "auto") or (method == "real" and cfg.emulation.transport_latency):
        return FallbackEmulation(cfg, peer_id, transport, latency_only=method == "real")
    return None


class FallbackEmulation:
    def __init__(self, cfg: Config, peer_id: int, transport, sleep=time.sleep, latency_only: bool = False):
        self.cfg = cfg
        self.latency_only = latency_only
        self.peer_id = peer_id
        self.transport = transport
        self.threads = cfg.peer(peer_id).tf_threads
        self.cores = cfg.cores(peer_id)
        self._sleep = sleep
        mine = [c for c in cfg.schedule if c.src == peer_id or (c.peer == peer_id and not latency_only)]
        self._pending = sorted(mine, key=lambda c: c.at)

    def start(self) -> None:
        """Shape every outgoing link as configured for the start of training."""
        for dst in self.cfg.peer_ids:
            if dst != self.peer_id:
                self._shape(dst, self.cfg.link(self.peer_id, dst))

    def update(self, elapsed: float) -> list:
        """Apply this peer's scheduled changes due by `elapsed` seconds of training; returns those applied."""
        applied = []
        while self._pending and self._pending[0].at <= elapsed:
            change = self._pending.pop(0)
            if change.is_link:
                self._shape(change.dst, self.cfg.link(change.src, change.dst, at=change.at))
            else:
                self.cores = change.cores
            applied.append(change)
        return applied

    def _shape(self, dst: int, link) -> None:
        self.transport.set_link(dst, None if self.latency_only else link.bandwidth, link.latency)

    def throttle(self, cpu_s: float, wall_s: float) -> None:
        """Idle after a compute step that used `cpu_s` CPU-seconds in `wall_s` seconds, to hold the configured
        cores."""
        if self.latency_only:
            return
        idle = cpu_s / self.cores - wall_s
        if idle > 0:
            self._sleep(idle)
