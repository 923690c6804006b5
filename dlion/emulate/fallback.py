"""What each peer emulates itself: all of the method that needs no privileges (`fallback`), and under `real` the
parts the kernel leaves to the peer. It is attached to the peer from outside, through its two hooks: a step clock
around each gradient computation (`dlion.clock.StepClock`) and a link policy in the transport
(`dlion.transport.base.LinkPolicy`); the training code never imports this package.

Links: every outgoing link is shaped in the transport (a serialization queue at the link's rate plus its one-way
latency, see `links.ShapedLinks`). Compute: every gradient step is paced to the peer's cores
(`dlion.emulate.pacing`), and the peer's nice value weighs it in proportion to its cores when the peers contend for a
fully booked machine, as the real method's cgroup weights do (each nice level is a factor of 1.25 in CFS weight; a
process without privileges can raise its nice value but not lower it again). The config's schedule is applied as
training time passes, checked before every step.

Under the real method the kernel shapes the links' bandwidth, and only their one-way latency is emulated here, on
kernels without netem. Compute is paced under both methods: the cgroup's quota is a ceiling over a period, which a
peer that waits for the network never reaches (see the pacing module).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

from dlion.config import Config
from dlion.emulate import turns
from dlion.emulate.links import ShapedLinks
from dlion.emulate.pacing import ComputePacer


NICE_STEP = 1.25  # CFS weight ratio between two nice levels
MAX_NICE = 19


def burst_phase(cfg: Config, peer_id: int, at: float = 0.0) -> float:
    """Where in each pacing period the peer's bursts start: after the bursts of the peers before it, so that peers
    whose cores add up to one CPU compute one after another rather than all at once and colder."""
    return sum(cfg.cores(p, at) for p in cfg.peer_ids if p < peer_id) % 1


def nice_for(cfg: Config, peer_id: int, at: float = 0.0) -> int:
    """The nice value that weighs a peer against the largest one in proportion to their cores at `at`."""
    largest = max(cfg.cores(p, at) for p in cfg.peer_ids)
    return min(MAX_NICE, max(0, round(math.log(largest / cfg.cores(peer_id, at), NICE_STEP))))


def _each_thread(action, ignore=(ProcessLookupError,)) -> None:
    """`action(tid)` for every thread of this process: Linux keeps nice values and CPU affinity per thread (new
    threads inherit their creator's). A thread may end meanwhile."""
    for tid in os.listdir("/proc/self/task"):
        try:
            action(int(tid))
        except ignore:
            pass


def _renice(nice: int) -> None:
    # lowering a nice value needs privileges
    _each_thread(lambda tid: os.setpriority(os.PRIO_PROCESS, tid, nice), ignore=(PermissionError, ProcessLookupError))


def _pin(cpus: set[int]) -> None:
    _each_thread(lambda tid: os.sched_setaffinity(tid, cpus))


def for_peer(cfg: Config, peer_id: int, turns_dir: Path | None = None) -> "InProcessEmulation | None":
    """What a peer itself must emulate: everything under `fallback` (and `auto`, which the launcher resolves before
    starting peers, so a lone peer can only mean the in-process method); under `real`, its compute pace, and the
    links' latency where the kernel has no netem (`transport_latency`); nothing without emulation. `turns_dir`: where
    the peers of this machine keep their CPU turns (see `turns`)."""
    method = cfg.emulation.in_process_method
    if method == "fallback":
        return InProcessEmulation(cfg, peer_id, turns_dir=turns_dir)
    if method == "real":
        shaping = "latency" if cfg.emulation.transport_latency else "none"
        return InProcessEmulation(cfg, peer_id, shaping=shaping, turns_dir=turns_dir)
    return None


class InProcessEmulation:
    """A peer's step clock and link policy. `shaping`: what this peer emulates of its outgoing links:
    "rate-and-latency" (the fallback), "latency" (the real method on a kernel without netem) or "none" (the kernel
    does both). `turns_dir`: where the peers of this machine take turns on the CPUs they share; with it, each peer's
    threads also keep to its CPUs (`turns.pinned_cpus`, among the `cpus` it may use)."""

    def __init__(self, cfg: Config, peer_id: int, shaping: str = "rate-and-latency", turns_dir: Path | None = None,
                 sleep=time.sleep, clock=time.monotonic, cpu_clock=time.process_time, renice=_renice, pin=_pin,
                 cpus: set[int] | None = None):
        self.cfg = cfg
        self.method = cfg.emulation.in_process_method
        self.shaping = shaping
        self.peer_id = peer_id
        self.turns_dir = turns_dir
        self.link_policy = ShapedLinks() if shaping != "none" else None
        self.pacer = ComputePacer(cfg.cores(peer_id), sleep, clock)  # placed by start()
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._renice = renice
        self._pin = pin
        self._cpus = set(cpus if cpus is not None else os.sched_getaffinity(0))  # what the peer may use at all
        mine = [c for c in cfg.schedule if (c.src == peer_id and shaping != "none") or c.peer == peer_id]
        self._pending = sorted(mine, key=lambda c: c.at)
        self._reweigh_at = sorted({c.at for c in cfg.schedule if not c.is_link})  # any peer's cores change
        self._origin: float | None = None
        self._applied: list = []

    @property
    def cores(self) -> float:
        return self.pacer.cores

    def start(self) -> None:
        """Training starts (the schedule's time 0): shape every outgoing link as configured for it, and weigh the
        peer's compute."""
        self._origin = self._clock()
        self._weigh(0.0)
        if self.link_policy is None:
            return
        for dst in self.cfg.peer_ids:
            if dst != self.peer_id:
                self._shape(dst, self.cfg.link(self.peer_id, dst))

    def changes(self) -> list[dict]:
        """The scheduled changes applied since the last call, as event fields."""
        applied, self._applied = self._applied, []
        return [{k: v for k, v in vars(c).items() if v is not None} for c in applied]

    def update(self, elapsed: float) -> list:
        """Apply this peer's scheduled changes due by `elapsed` seconds of training; returns those applied."""
        applied = []
        while self._pending and self._pending[0].at <= elapsed:
            change = self._pending.pop(0)
            if change.is_link:
                self._shape(change.dst, self.cfg.link(change.src, change.dst, at=change.at))
            else:
                self.pacer.move(cores=change.cores)
            applied.append(change)
        self._applied += applied
        if self._reweigh_at and self._reweigh_at[0] <= elapsed:
            while self._reweigh_at and self._reweigh_at[0] <= elapsed:
                self._reweigh_at.pop(0)
            self._weigh(elapsed)
        return applied

    def _weigh(self, at: float) -> None:
        """Place the peer's bursts, its CPU turns and the CPUs it runs on, and under the fallback its CPU weight,
        for every peer's cores at `at`."""
        self.pacer.move(phase=burst_phase(self.cfg, self.peer_id, at))
        if self.turns_dir is not None:
            # the CPUs the peer may use, not its own affinity: after the first placement that is its pinned CPUs
            cpu = turns.shared_cpus(self.cfg, at, len(self._cpus)).get(self.peer_id)
            path = None if cpu is None else turns.lock_path(self.turns_dir, cpu)
            if self.pacer.turn and self.pacer.turn.path != path:
                self.pacer.turn.close()
                self.pacer.turn = None
            if path and not self.pacer.turn:
                self.pacer.turn = turns.CpuTurn(path)
            self._pin(turns.pinned_cpus(self.cfg, at, self._cpus).get(self.peer_id, self._cpus))
        if self.shaping == "rate-and-latency":
            self._renice(nice_for(self.cfg, self.peer_id, at))

    def _shape(self, dst: int, link) -> None:
        self.link_policy.set(dst, link.bandwidth if self.shaping == "rate-and-latency" else None, link.latency)

    @contextlib.contextmanager
    def step(self):
        """Around one gradient step: apply the scheduled changes that fell due, wait for the peer's turn where it
        shares a CPU, then idle as long as a machine of the configured cores would have taken longer (CPU time counts
        all the process's threads)."""
        if self._origin is not None:
            self.update(self._clock() - self._origin)
        start, cpu = self._clock(), self._cpu_clock()
        self.pacer.before_step()
        yield
        self.pacer.after_step(self._cpu_clock() - cpu, self._clock() - start)

    def close(self) -> None:
        """Give up any CPU turn: after training, the peer must not keep the others from theirs."""
        if self.pacer.turn:
            self.pacer.turn.close()
            self.pacer.turn = None
