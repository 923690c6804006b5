"""Compute pacing: idle after each step that follows a wait, once per period for steps that follow each other."""
import pytest

from dlion.emulate.pacing import ComputePacer


class FakeTime:
    """A clock that only moves when a step runs, the peer waits, or the pacer sleeps."""

    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def step(self, pacer, cpu_s, wall_s, wait_s=0.0):
        """The peer waits `wait_s` (for the network), computes for `wall_s`, then asks the pacer."""
        self.now += wait_s + wall_s
        return pacer.after_step(cpu_s, wall_s)


def pacer(cores, t, period_s=1.0):
    return ComputePacer(cores, sleep=t.sleep, clock=t.clock, period_s=period_s)


def test_a_step_after_a_wait_idles_at_once_so_the_round_keeps_its_timing():
    t = FakeTime()
    p = pacer(0.25, t)
    for _ in range(3):
        assert t.step(p, cpu_s=0.01, wall_s=0.01, wait_s=0.05) == pytest.approx(0.03)  # 0.01 CPU-s take 0.04 s
    assert len(t.sleeps) == 3


def test_back_to_back_steps_idle_once_per_period_and_keep_the_average_share():
    t = FakeTime()
    p = pacer(0.2, t)
    start = t.now
    for _ in range(41):
        t.step(p, cpu_s=0.01, wall_s=0.01)
    # the first step follows nothing and idles at once; the next 40 fill two periods of 20 steps + 0.8 s idling
    assert t.sleeps == [pytest.approx(0.04), pytest.approx(0.8), pytest.approx(0.8)]
    assert t.now - start == pytest.approx(41 * 0.01 / 0.2)  # the same time as idling after every step


def test_a_contended_step_owes_less_idling():
    t = FakeTime()
    p = pacer(0.25, t)
    assert t.step(p, cpu_s=0.05, wall_s=0.1, wait_s=1.0) == pytest.approx(0.1)  # got the CPU half the time
    assert t.step(p, cpu_s=0.02, wall_s=0.1, wait_s=1.0) == 0.0  # slower than the emulated machine already


def test_a_peer_within_its_cores_never_idles():
    t = FakeTime()
    p = pacer(2.0, t)
    for wait in (0.0, 0.05):
        assert t.step(p, cpu_s=0.2, wall_s=0.1, wait_s=wait) == 0.0  # two busy threads on two cores
    assert t.sleeps == []


def test_a_new_share_applies_to_the_next_steps():
    t = FakeTime()
    p = pacer(1.0, t)
    assert t.step(p, cpu_s=0.01, wall_s=0.01, wait_s=0.1) == 0.0
    p.cores = 0.5
    assert t.step(p, cpu_s=0.01, wall_s=0.01, wait_s=0.1) == pytest.approx(0.01)
