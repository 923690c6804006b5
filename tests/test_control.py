"""Run control: what a peer does while it waits for the others' evaluation figures."""
import threading
import time

from conftest import stage_context
from dlion.config import Evaluation, Training
from dlion.control import RunControl


def control_of(transports, peer, deadline_s=0.3):
    return RunControl(Training(dataset="synthetic", max_seconds=60, target_accuracy=0.99),
                      Evaluation(every_iterations=20, deadline_s=deadline_s), stage_context(transports, peer),
                      lambda: (0.3, 0.5), lambda *a, **k: None, threading.Event(), lag=0)


def test_while_it_waits_for_a_silent_peers_figure_it_keeps_doing_its_idle_work_until_the_deadline(inproc):
    transports = inproc((0, 1, 2))
    control = control_of(transports, 0)
    idle = []
    control.idle = lambda round_: idle.append((round_, time.monotonic()))
    control.start()
    transports[1].send(0, "eval", 20, None, {"acc": 0.5})  # peer 2 never reports
    began = time.monotonic()
    control.after(20)
    took = time.monotonic() - began
    assert 0.3 <= took < 1.0
    assert len(idle) >= 3 and {r for r, _ in idle} == {20}
    assert all(t - began < 0.35 for _, t in idle)


def test_once_every_figure_is_in_it_does_not_wait(inproc):
    transports = inproc((0, 1))
    control = control_of(transports, 0, deadline_s=5.0)
    idle = []
    control.idle = idle.append
    control.start()
    transports[1].send(0, "eval", 20, None, {"acc": 0.5})
    time.sleep(0.05)
    began = time.monotonic()
    control.after(20)
    assert time.monotonic() - began < 0.5 and idle == []
