"""Compute pacing: a peer of `cores` takes as long for its gradient steps as its machine would.

Both emulation methods pace in the peer, through its step clock. A CPU quota alone (the real method's cgroup) caps CPU
time per period, so a peer that waits for the network most of each period would run its short steps at full speed.
Paced, steps that used `c` CPU-seconds (all threads) in `w` seconds of wall time are followed by `c / cores - w`
seconds of idling. Counting CPU time rather than wall time keeps the share right on a contended machine: a step slowed
down by other peers used less CPU, so it owes less idling.

When to idle. A step that follows a pause costs more CPU than one that follows another step (caches and the like warm
up again over a few steps). A step that follows the peer's own wait for the network pays that on the emulated
machine too, so the pacer idles right after it, before its result is sent: every round keeps its emulated timing.
Steps that follow each other back to back would pay it only because of the pacer, so there it lets them run in bursts
and idles at the first step past each `period_s` mark, until the emulated machine would have finished. The marks are a
grid on the monotonic clock (common to all processes), shifted by `phase` of a period per peer: any one-second window
then holds the same share of compute, and the emulation lays the bursts of one machine's peers end to end
(`fallback.burst_phase`).

Pauses within a burst. The emulated machine runs behind the peer through a burst, so whether a step follows a wait is
judged against when the emulated machine would have finished the steps before it: a pause that ends before then (the
peer preempted, or waiting for the GIL, for a few milliseconds) does not end the burst and forget what it still owes.

Changes. When a scheduled change moves the places on a shared CPU, a burst that went on would run in another peer's
new place, and the others' bursts would then start late, each passing the delay on to the next. So a change ends the
burst under way, and a peer below one core starts again at its new place, giving up what is left of that one period.

The measurements behind each of these rules are in docs/benchmarks.md ("Emulation check").
"""
from __future__ import annotations

import math
import time

PERIOD_S = 1.0
BACK_TO_BACK_S = 0.002  # a step asked for within this of the emulated machine's finish follows the steps back to back


class ComputePacer:
    def __init__(self, cores: float, sleep=time.sleep, clock=time.monotonic, period_s: float = PERIOD_S,
                 phase: float = 0.0):
        self.cores = cores
        self.period_s = period_s
        self.phase = phase
        self._sleep = sleep
        self._clock = clock
        self._last_end: float | None = None  # when the emulated machine finishes the steps so far (and any idling)
        self._burst_start = 0.0  # when the current run of back-to-back steps started
        self._emulated = 0.0  # how long the emulated machine takes for the steps of the run so far
        self.turn = None  # this peer's `turns.CpuTurn` where it shares a CPU with other peers
        self._turn_wait = 0.0  # how long the current step waited for its turn
        self._moved = False  # the share or the place changed during the current burst

    def move(self, cores: float | None = None, phase: float | None = None) -> None:
        """A new share or place (a scheduled change; None keeps the current one). A burst under way ends at its next
        step: a peer below one core then waits for the start of its new place rather than finish the burst across
        the places of the peers it now shares a CPU with; a whole-core peer starts a new burst at once."""
        for name, value in (("cores", cores), ("phase", phase)):
            if value is not None and value != getattr(self, name):
                setattr(self, name, value)
                self._moved = True

    def before_step(self) -> None:
        """Wait for this peer's turn on a shared CPU. The wait counts as the emulated machine's time: every peer
        that shares the CPU then gives up the same fraction of its share when the CPU is overbooked, and a late
        burst still ends at its mark instead of pushing the next peer's burst later."""
        self._turn_wait = 0.0
        if self.turn:
            asked = self._clock()
            self.turn.take()
            self._turn_wait = self._clock() - asked

    def after_step(self, cpu_s: float, wall_s: float) -> float:
        """Idle, now or at the end of the burst, after a step that used `cpu_s` CPU-seconds in `wall_s` seconds;
        returns the idle time."""
        now = self._clock()
        start = now - wall_s  # when it asked for its turn: after a network wait, a turn wait shortens the idling
        if self._last_end is None or start - self._last_end >= BACK_TO_BACK_S:  # after a wait: idle right away
            self._moved = False
            return self._idle_until(start + cpu_s / self.cores)
        if self._moved:
            self._moved = False
            return self._idle_until(self._next_mark(now) if self.cores < 1 else now)
        self._emulated += cpu_s / self.cores + self._turn_wait
        finish = self._burst_start + self._emulated
        if finish < self._next_mark(self._burst_start):
            self._last_end = max(now, finish)
            if self.turn:
                self.turn.hold()
            return 0.0
        return self._idle_until(finish)

    def _next_mark(self, t: float) -> float:
        origin = self.phase * self.period_s
        return origin + self.period_s * (math.floor((t - origin) / self.period_s) + 1)

    def _idle_until(self, t: float) -> float:
        """Give up any turn, idle until `t` (if it is still ahead), then start a new run of steps."""
        if self.turn:
            self.turn.give_up()
        idle = t - self._clock()
        if idle > 0:
            self._sleep(idle)
        self._last_end = self._burst_start = self._clock()
        self._emulated = 0.0
        return max(0.0, idle)
