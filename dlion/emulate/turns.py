"""CPU turns: the emulated peers that share one of this machine's CPUs compute one at a time, each a whole burst.

Why. A scenario may book every CPU of the machine (hetero-4: 1.0 + 0.5 + 0.3 + 0.2 cores on two), so the smaller
peers share one. Paced peers compute in bursts laid end to end (`pacing`, `fallback.burst_phase`), but with no slack
one overrun makes the next burst overlap, and overlapping peers are time-sliced by the kernel a few milliseconds at a
time: a step then costs more CPU, a peer gets its share of CPU time but computes less with it, and bursts that
overlap keep overlapping. Taking turns, every step runs warm.

Which peers share a CPU: those below one core, spread (largest first, each onto the least booked) over the CPUs that
the peers of one core or more leave (`shared_cpus`). A turn is an exclusive `flock` of one lock file per shared CPU,
in a directory that every peer on the machine sees (the run's output directory); the kernel drops a dead peer's lock
with it.

A peer keeps its turn from one step to the next through a burst, and gives it up when it idles, or when no step
follows within `hold_s`: then it is waiting for the network, and must not make the others wait with it.

Each peer's threads also keep to its CPUs (`pinned_cpus`): a whole-core peer to CPUs of its own, the others to the
CPU they share; left to the kernel, they moved between CPUs and the turns waited longer. The measurements are in
docs/benchmarks.md ("Emulation check").
"""
from __future__ import annotations

import fcntl
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from dlion.config import Config

HOLD_S = 0.002  # as long as the pacer's back-to-back gap


def shared_cpus(cfg: Config, at: float = 0.0, cpus: int | None = None) -> dict[int, int]:
    """Which shared CPU each peer below one core computes on at `at` (peers of a core or more are left out)."""
    cpus = cpus or len(os.sched_getaffinity(0))
    whole = sum(math.ceil(cfg.cores(p, at)) for p in cfg.peer_ids if cfg.cores(p, at) >= 1)
    load = [0.0] * max(1, cpus - whole)
    placed = {}
    for peer in sorted((p for p in cfg.peer_ids if cfg.cores(p, at) < 1), key=lambda p: (-cfg.cores(p, at), p)):
        cpu = min(range(len(load)), key=load.__getitem__)
        load[cpu] += cfg.cores(peer, at)
        placed[peer] = cpu
    return placed


def pinned_cpus(cfg: Config, at: float = 0.0, cpus: Sequence[int] | None = None) -> dict[int, set[int]]:
    """Which of this machine's `cpus` each peer's threads run on at `at`: the peers of a core or more a block of
    ceil(cores) CPUs each, in peer order, and the others the CPU they share (`shared_cpus`). Empty where the
    whole-core peers leave no CPU to share: the kernel then places everyone."""
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    whole = [p for p in cfg.peer_ids if cfg.cores(p, at) >= 1]
    booked = sum(math.ceil(cfg.cores(p, at)) for p in whole)
    if booked + (len(whole) < len(cfg.peer_ids)) > len(cpus):
        return {}
    pinned, first = {}, 0
    for peer in whole:
        size = math.ceil(cfg.cores(peer, at))
        pinned[peer] = set(cpus[first:first + size])
        first += size
    for peer, shared in shared_cpus(cfg, at, len(cpus)).items():
        pinned[peer] = {cpus[booked + shared]}
    return pinned


def lock_path(directory: Path, cpu: int) -> Path:
    return Path(directory) / f"cpu-turn-{cpu}.lock"


def remove_locks(directory: Path) -> None:
    """Remove the lock files of a run whose peers have all stopped."""
    for path in Path(directory).glob("cpu-turn-*.lock"):
        path.unlink(missing_ok=True)


class CpuTurn:
    """This peer's turns on one shared CPU. `take` before a step, then `hold` (the burst goes on) or `give_up`."""

    def __init__(self, path: Path, hold_s: float = HOLD_S, clock=time.monotonic):
        self.path = Path(path)
        self.hold_s = hold_s
        self._clock = clock
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        self._cond = threading.Condition()
        self._held = False
        self._give_up_at: float | None = None  # while the turn is held between two steps
        self._closed = False
        self._keeper = threading.Thread(target=self._keep, name="cpu-turn", daemon=True)
        self._keeper.start()

    @property
    def held(self) -> bool:
        return self._held

    def take(self) -> None:
        """Wait for this peer's turn; at once if it still holds it from the previous step."""
        with self._cond:
            self._give_up_at = None
            if self._held:
                return
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # outside the condition: the keeper never releases an unheld turn
        with self._cond:
            self._held = True

    def hold(self) -> None:
        """Keep the turn for the next step of the burst; it is given up if none starts within `hold_s`."""
        with self._cond:
            self._give_up_at = self._clock() + self.hold_s
            self._cond.notify()

    def give_up(self) -> None:
        with self._cond:
            self._give_up_at = None
            self._release()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._give_up_at = None
            self._release()
            self._cond.notify()
        self._keeper.join()
        os.close(self._fd)

    def _release(self) -> None:  # with the condition held
        if self._held:
            self._held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _keep(self) -> None:
        """Give the turn up once a held turn has gone `hold_s` without a step."""
        with self._cond:
            while not self._closed:
                if self._give_up_at is None:
                    self._cond.wait()
                elif (remaining := self._give_up_at - self._clock()) > 0:
                    self._cond.wait(remaining)
                else:
                    self._give_up_at = None
                    self._release()
