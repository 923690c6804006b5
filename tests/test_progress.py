"""Progress events: averages over the iterations since the last event (no TF, no sockets)."""
import numpy as np
import pytest

from dlion.clock import Unpaced
from dlion.progress import ProgressReport
from dlion.stages import ExchangeResult, GossipResult


class Log:
    def __init__(self):
        self.events = []

    def emit(self, ev, **fields):
        self.events.append({"ev": ev, **fields})

    def resources(self):
        return {}


class Transport:
    def stats(self):
        return {}


class Batching:
    sizes = {0: 32}
    rate = None


def test_an_iter_event_averages_compute_wait_and_round_time_since_the_last_one():
    log = Log()
    progress = ProgressReport(log, 3, Transport(), Batching(), Unpaced(), 1.0)
    for it, (compute_s, wait_s, elapsed) in enumerate([(0.2, 0.1, 1.0), (0.3, 0.0, 1.5), (0.4, 0.2, 2.5)], 1):
        progress.add(it, 32, 1.0, compute_s, ExchangeResult(np.zeros(1), 1, wait_s), GossipResult(1.0, 0, 0.0),
                     elapsed)
    event, = [e for e in log.events if e["ev"] == "iter"]
    assert event["it"] == 3 and event["samples"] == 96
    assert event["compute_s"] == pytest.approx(0.3) and event["wait_s"] == pytest.approx(0.1)
    assert event["round_s"] == pytest.approx(0.75)  # the first iteration's length is unknown: left out
    progress.add(4, 32, 1.0, 0.2, ExchangeResult(np.zeros(1), 1, 0.0), GossipResult(1.0, 0, 0.0), 3.1, due=True)
    assert log.events[-1]["round_s"] == pytest.approx(0.6)
