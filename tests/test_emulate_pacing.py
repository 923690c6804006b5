"""Compute pacing: idle after each step that follows a wait, at period marks for steps that follow each other."""
import pytest

from dlion.emulate.pacing import ComputePacer


class FakeTime:
    """A clock that only moves when a step runs, the peer waits, or the pacer sleeps."""

    def __init__(self):
        self.now = 100.0
        self.cpu = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def cpu_clock(self):
        return self.cpu

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def step(self, pacer, cpu_s, wall_s, wait_s=0.0):
        """The peer waits `wait_s` (for the network), computes for `wall_s`, then asks the pacer."""
        self.now += wait_s + wall_s
        return pacer.after_step(cpu_s, wall_s)

    def emulated_step(self, emulation, cpu_s, wall_s):
        """One gradient step inside `emulation.step()`; returns how long the peer idled after it."""
        slept = len(self.sleeps)
        with emulation.step():
            self.now += wall_s
            self.cpu += cpu_s
        return sum(self.sleeps[slept:])


def pacer(cores, t, period_s=1.0, phase=0.0):
    return ComputePacer(cores, sleep=t.sleep, clock=t.clock, period_s=period_s, phase=phase)


def test_a_step_after_a_wait_idles_at_once_so_the_round_keeps_its_timing():
    t = FakeTime()
    p = pacer(0.25, t)
    for _ in range(3):
        assert t.step(p, cpu_s=0.01, wall_s=0.01, wait_s=0.05) == pytest.approx(0.03)  # 0.01 CPU-s take 0.04 s
    assert len(t.sleeps) == 3


def test_back_to_back_steps_run_in_bursts_up_to_each_period_mark_and_keep_the_average_share():
    t = FakeTime()  # starts at 100.0: the marks are at whole seconds
    p = pacer(0.25, t)
    step = 1 / 64  # exact in binary; the emulated machine takes 1/16 s
    for _ in range(32):
        t.step(p, cpu_s=step, wall_s=step)
    # the first step follows nothing and idles at once, to 100.0625; the next 15 reach the mark at 101.0 exactly,
    # then 16 more the mark at 102.0
    assert t.sleeps == [pytest.approx(0.046875), pytest.approx(0.703125), pytest.approx(0.75)]
    assert t.now == pytest.approx(100 + 32 / 16)  # the same time as idling after every step


def test_the_phase_shifts_the_marks_and_a_step_past_a_mark_idles_until_the_emulated_finish():
    t = FakeTime()
    p = pacer(0.25, t, phase=0.5)  # marks at x.5
    step = 1 / 64
    for _ in range(8):
        t.step(p, cpu_s=step, wall_s=step)
    # idle at once to 100.0625, then 7 steps: the 7th ends at 100.5 emulated, the mark
    assert t.sleeps == [pytest.approx(0.046875), pytest.approx(0.5 - 0.0625 - 7 / 64)]
    t.step(p, cpu_s=0.1, wall_s=0.1)  # 0.4 s emulated: 100.9, before the next mark (101.5), so the burst goes on
    assert len(t.sleeps) == 2
    t.step(p, cpu_s=0.2, wall_s=0.2)  # 0.8 s more: past the mark, so idle until the emulated finish at 101.7
    assert t.sleeps[2] == pytest.approx(101.7 - 100.8) and t.now == pytest.approx(101.7)


def test_a_pause_before_the_emulated_machine_is_done_does_not_end_the_burst():
    t = FakeTime()
    p = pacer(0.25, t)
    step = 1 / 64  # 1/16 s emulated
    for _ in range(5):
        t.step(p, cpu_s=step, wall_s=step)
    # idled once, to 100.0625; 4 more steps: at 100.125 the emulated machine is busy until 100.3125
    assert t.sleeps == [pytest.approx(0.046875)]
    assert t.step(p, cpu_s=step, wall_s=step, wait_s=0.1) == 0.0  # asked at 100.225: still the same burst
    assert len(t.sleeps) == 1
    # asked at ~100.74, after the emulated machine finished (100.375): a step after a wait, idled at once
    assert t.step(p, cpu_s=step, wall_s=step, wait_s=0.5) == pytest.approx(3 / 64)


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
    p.move(cores=0.5)
    assert t.step(p, cpu_s=0.01, wall_s=0.01, wait_s=0.1) == pytest.approx(0.01)


def test_a_change_ends_the_burst_and_a_peer_below_one_core_waits_for_its_new_place():
    t = FakeTime()
    p = pacer(0.25, t)
    step = 1 / 64
    for _ in range(4):
        t.step(p, cpu_s=step, wall_s=step)  # idled once, to 100.0625, then a burst up to 100.109
    p.move(phase=0.5)
    assert t.step(p, cpu_s=step, wall_s=step) == pytest.approx(100.5 - 100.125)  # idle until the new place
    assert t.step(p, cpu_s=step, wall_s=step) == 0.0  # and a new burst there
    p.move(cores=0.25)  # no change: the burst goes on
    assert t.step(p, cpu_s=step, wall_s=step) == 0.0


def test_a_change_to_a_whole_core_starts_a_new_burst_at_once():
    t = FakeTime()
    p = pacer(0.25, t)
    step = 1 / 64
    for _ in range(4):
        t.step(p, cpu_s=step, wall_s=step)
    p.move(cores=1.0)
    assert t.step(p, cpu_s=step, wall_s=step) == 0.0
    assert [t.step(p, cpu_s=step, wall_s=step) for _ in range(20)] == [0.0] * 20  # its own core: no idling


class RecordingTurn:
    def __init__(self, t):
        self.t, self.calls = t, []

    def take(self):
        self.calls.append("take")

    def hold(self):
        self.calls.append("hold")

    def give_up(self):
        self.calls.append(("give_up", len(self.t.sleeps)))  # how many sleeps had begun


def test_a_turn_is_taken_before_each_step_held_through_a_burst_and_given_up_before_idling():
    t = FakeTime()
    p = pacer(0.25, t)
    p.turn = turn = RecordingTurn(t)
    step = 1 / 64
    for _ in range(17):
        p.before_step()
        t.step(p, cpu_s=step, wall_s=step)
    # the first step idles at once; of the next 15, the last reaches the mark at 101.0: the 17th starts a new burst
    assert turn.calls == (["take", ("give_up", 0)] + ["take", "hold"] * 14 + ["take", ("give_up", 1)]
                          + ["take", "hold"])


class WaitingTurn(RecordingTurn):
    """A turn that other peers hold for the next of `waits` each time this peer asks for it anew."""

    def __init__(self, t, waits):
        super().__init__(t)
        self.waits, self.held = list(waits), False

    def take(self):
        if not self.held and self.waits:
            self.t.now += self.waits.pop(0)
        self.held = True
        super().take()

    def give_up(self):
        self.held = False
        super().give_up()


def test_a_turn_wait_counts_as_emulated_time_so_a_late_burst_still_ends_at_its_mark():
    t = FakeTime()
    p = pacer(0.25, t)
    p.turn = WaitingTurn(t, waits=[0.0, 0.125])
    step = 1 / 64  # 1/16 s emulated
    for _ in range(14):
        asked = t.now
        p.before_step()
        t.now += step
        p.after_step(step, t.now - asked)  # the step's wall time includes its turn wait, as in `step()`
    # the first step idles at once, to 100.0625; the burst then waits 0.125 s for its turn, and that counts: 13 steps
    # (not 15) bring its emulated finish to the mark at 101.0, and it idles until then
    assert t.sleeps == [pytest.approx(0.046875), pytest.approx(101.0 - (100.0625 + 0.125 + 13 / 64))]
    assert t.now == pytest.approx(101.0) and p.turn.calls.count(("give_up", 1)) == 1
