"""Simulated compute time: a step's calibrated cost over the peer's cores, as virtual time."""
import pytest

from dlion.config import parse
from dlion.simulate.compute import Calibration, SimulatedClock, charger
from dlion.simulate.scheduler import Scheduler

CAL = Calibration("test", step_fixed_s=0.002, step_per_sample_s=0.0005, apply_s=0.001, eval_fixed_s=0.0,
                  eval_per_sample_s=0.0001, copy_per_value_s=1e-6, load_average=0.0)


def config(schedule=()):
    return parse({"peers": [{"id": 0, "port": 47700, "cores": 1.0}, {"id": 1, "port": 47701, "cores": 0.5}],
                  "training": {"max_iterations": 1}, "schedule": list(schedule)})


def step_times(cfg, batch=32, steps=3):
    """Virtual seconds each peer's steps of `batch` samples take."""
    sched = Scheduler()
    took = {}
    for pid in cfg.peer_ids:
        actor = sched.actor(f"peer-{pid}")
        charge = charger(actor, cfg, pid)

        def run(pid=pid, actor=actor, charge=charge):
            for _ in range(steps):
                charge(CAL.step_s(batch))
            actor.settle()
            took[pid] = sched.clock()
        actor.start(run)
    sched.run()
    return took


def test_a_peer_with_half_the_cores_takes_twice_as_long_per_step():
    took = step_times(config())
    assert took[0] == pytest.approx(3 * (0.002 + 32 * 0.0005))
    assert took[1] == pytest.approx(2 * took[0])


def test_a_step_costs_its_fixed_part_plus_its_samples():
    small, large = step_times(config(), batch=8)[0], step_times(config(), batch=64)[0]
    assert large - small == pytest.approx(3 * 56 * 0.0005)


def test_scheduled_changes_of_cores_apply_from_their_time_and_are_reported_once():
    cfg = config(schedule=[{"at": "1s", "peer": 1, "cores": 2.0}])
    now = [0.0]
    clock = SimulatedClock(cfg, 1, lambda: now[0])
    assert clock.cores == 0.5 and clock.changes() == []
    now[0] = 1.5
    assert clock.cores == 2.0
    assert clock.changes() == [{"at": 1.0, "peer": 1, "cores": 2.0}]
    assert clock.changes() == []


def burn(cpu_s):
    """Use `cpu_s` seconds of this thread's CPU time."""
    import time
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


def metered(body):
    """Run `body(actor, sched)` as peer 1 (0.5 cores) with its CPU time metered; returns the actor."""
    from dlion.simulate.compute import HostCpu
    sched = Scheduler()
    actor = sched.actor("peer-1")
    actor.meter = HostCpu(charger(actor, config(), 1))
    actor.start(lambda: body(actor, sched))
    sched.run()
    return actor


def test_the_cpu_overhead_meter_charges_own_work_at_the_cores_but_not_the_models():
    seen = {}

    def run(actor, sched):
        burn(0.05)  # the peer's own work: 0.05 CPU-s at 0.5 cores
        with actor.meter.apart():
            burn(0.05)  # the model view's: charged by the calibration instead
        actor.settle()
        seen["t"] = sched.clock()

    actor = metered(run)
    assert 0.1 <= seen["t"] < 0.15
    assert 0.05 <= actor.meter.charged_s < 0.075


def test_work_done_before_the_peer_reads_its_clock_is_in_the_time_it_reads():
    """What the peer stamps on a message it sends after work (an encoding, a top-k) comes after that work."""
    seen = {}

    def run(actor, sched):
        burn(0.05)
        seen["t"] = sched.clock()  # before any settle
        actor.settle()

    metered(run)
    assert 0.1 <= seen["t"] < 0.15


def test_copies_of_the_model_a_peer_asks_for_cost_it_time_but_the_simulations_swaps_do_not():
    import numpy as np
    from dlion.simulate.compute import SharedModel
    from test_rejoin import Trainer  # flat parameters and optimizer state, no TensorFlow

    charged = {0: 0.0, 1: 0.0}
    shared = SharedModel(Trainer(0.0, size=1000))
    optimizer = shared.trainer.optimizer.size
    views = [shared.view(lambda s, p=p: charged.__setitem__(p, charged[p] + s), CAL) for p in (0, 1)]
    views[0].set_params(np.ones(1000, np.float32))
    views[0].set_optimizer_vector(np.ones(optimizer, np.float32))  # loads peer 0's state into the model: a swap
    views[1].set_optimizer_vector(np.zeros(optimizer, np.float32))  # unloads peer 0's, loads peer 1's: a swap
    views[1].get_params()
    assert shared.swaps == 2
    assert charged[0] == pytest.approx((1000 + optimizer) * 1e-6)
    assert charged[1] == pytest.approx((optimizer + 1000) * 1e-6)
    assert np.array_equal(views[0].get_params(), np.ones(1000)) and not views[1].get_params().any()
