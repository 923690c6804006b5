"""The virtual-time scheduler: parked actors resume in time order, work is paid lazily, runs repeat exactly."""
import math

import pytest

from dlion.simulate.scheduler import Scheduler


def ping_pong(trace: bool = True) -> Scheduler:
    """Three actors that work, wait for each other's wake-ups with deadlines, and record what they saw."""
    sched = Scheduler(trace=trace)
    actors = {}
    seen = []

    def worker(i):
        def run():
            for step in range(5):
                actors[i].sleep(0.1 * (i + 1))  # work: paid at the next wait
                seen.append((i, step, sched.clock()))
                actors[(i + 1) % 3].wake()
                actors[i].wait(sched.clock() + 0.25)
            return i
        return run

    for i in range(3):
        actors[i] = sched.actor(f"a{i}")
    for i in range(3):
        actors[i].start(worker(i))
    sched.run()
    sched.seen = seen
    return sched


def test_the_same_inputs_give_the_same_event_sequence():
    first, second = ping_pong(), ping_pong()
    assert first.trace == second.trace and first.seen == second.seen
    assert len(first.trace) > 15
    assert [t for t, _ in first.trace] == sorted(t for t, _ in first.trace)  # events run in time order


def test_work_is_paid_before_the_actor_waits_and_its_clock_runs_ahead_meanwhile():
    sched = Scheduler()
    times = []

    def run():
        actor.sleep(1.5)
        times.append((sched.now, sched.clock()))  # the actor's own time runs ahead of the shared clock
        actor.sleep(0.5)
        actor.wait(sched.clock() + 1.0)  # settles the 2 s of work, then waits its 1 s deadline
        times.append((sched.now, sched.clock()))

    actor = sched.actor("a")
    actor.start(run)
    sched.run()
    assert times == [(0.0, 1.5), (3.0, 3.0)]
    assert actor.done and actor.error is None


def test_a_waiting_actor_is_woken_at_the_time_of_the_wake_not_at_its_deadline():
    sched = Scheduler()
    woke = []

    def sleeper():
        sleeper_actor.wait(10.0)
        woke.append(sched.clock())

    sleeper_actor = sched.actor("sleeper")
    sleeper_actor.start(sleeper)
    sched.at(2.5, sleeper_actor.wake)
    sched.at(4.0, sleeper_actor.wake)  # not waiting any more: nothing happens
    sched.run()
    assert woke == [2.5]
    assert sched.now == 4.0  # the stale deadline at 10 s did not resume anything


def test_a_failing_actor_ends_alone_and_reports_its_traceback():
    sched = Scheduler()

    def bad():
        bad_actor.sleep(1.0)
        raise RuntimeError("boom")

    def good():
        good_actor.wait(5.0)
        return "fine"

    bad_actor, good_actor = sched.actor("bad"), sched.actor("good")
    bad_actor.start(bad)
    good_actor.start(good)
    sched.run()
    assert "RuntimeError: boom" in bad_actor.error
    assert good_actor.result == "fine" and sched.now == 5.0


def test_only_an_actors_own_thread_can_take_its_time():
    sched = Scheduler()
    actor = sched.actor("a")
    actor.sleep(1.0)  # work is only counted here...
    with pytest.raises(RuntimeError, match="own thread"):
        actor.settle()  # ...and paid by the actor itself


def test_events_are_never_scheduled_in_the_past():
    sched = Scheduler()
    order = []
    sched.at(2.0, lambda: sched.at(1.0, lambda: order.append(sched.now)))
    sched.run()
    assert order == [2.0]
    with pytest.raises(ValueError):
        sched.at(math.nan, lambda: None)


def test_a_wake_while_the_actor_still_pays_its_work_resumes_it_once_paid():
    """Work owed when a wait begins is paid first; a wake meanwhile is kept, not lost, and takes effect then."""
    sched = Scheduler()
    woke = []

    def waiter():
        actor.sleep(1.0)
        actor.wait(10.0)  # owes 1 s first
        woke.append(sched.clock())

    actor = sched.actor("a")
    actor.start(waiter)
    sched.at(0.5, actor.wake)  # during the second it owes
    sched.run()
    assert woke == [1.0]
