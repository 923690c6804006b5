"""Compute pacing: a peer of `cores` takes as long for its gradient steps as its machine would.

Both emulation methods pace in the peer. A CPU quota alone (the real method's cgroup) caps CPU time per period, so a
peer that waits for the network most of each period runs its short steps at full speed: on hetero-4 with BSP, the
1.0- and 0.2-core peers both computed ~3,400 samples/s under the quota alone. Paced, steps that used `c` CPU-seconds
(all threads) in `w` seconds of wall time are followed by `c / cores - w` seconds of idling. Counting CPU time rather
than wall time keeps the share right on a contended machine: a step slowed down by other peers used less CPU, so it
owes less idling.

When to idle. On these VMs a step that follows a pause costs more CPU than one that follows another step: caches and
the like warm up again over about four steps (a 5.5 ms step costs 6.3 ms after 10 ms idle, 8.0 ms after 30 ms). A
step that follows the peer's own wait for the network pays that on the emulated machine too, so the pacer idles right
after it, before its result is sent: every round keeps its emulated timing. Steps that follow each other back to back
would pay it only because of the pacer, so there it idles once per `period_s`, like a CFS quota over that period:
with 1 s, a 0.2-core peer computes 200 ms and idles 800 ms, and the warm-up costs it 1-2% of its rate,
against ~30% when it idled after every step.
"""
from __future__ import annotations

import time

PERIOD_S = 1.0
BACK_TO_BACK_S = 0.002  # a step starting within this of the previous one's end (and idling) follows it back to back


class ComputePacer:
    def __init__(self, cores: float, sleep=time.sleep, clock=time.monotonic, period_s: float = PERIOD_S):
        self.cores = cores
        self.period_s = period_s
        self._sleep = sleep
        self._clock = clock
        self._last_end: float | None = None  # when the previous step, and any idling after it, ended
        self._period_start = 0.0
        self._owed = 0.0  # idling owed by the back-to-back steps of the current period

    def after_step(self, cpu_s: float, wall_s: float) -> float:
        """Idle, now or at the end of the period, after a step that used `cpu_s` CPU-seconds in `wall_s` seconds;
        returns the idle time."""
        now = self._clock()
        start = now - wall_s
        back_to_back = self._last_end is not None and start - self._last_end < BACK_TO_BACK_S
        if not back_to_back:
            self._period_start, self._owed = start, 0.0
        self._owed += cpu_s / self.cores - wall_s
        if back_to_back and now - self._period_start + self._owed < self.period_s:
            self._last_end = now
            return 0.0
        idle = max(0.0, self._owed)
        if idle > 0:
            self._sleep(idle)
        self._last_end = self._period_start = self._clock()
        self._owed = 0.0
        return idle
