"""The transport in virtual time: real encoding and mailbox, deliveries at the links' arrival times, waits and
deadlines in virtual time, and a peer's unpaid work settled before it reads its mailbox."""
import numpy as np
import pytest

from dlion import messages
from dlion.config import parse
from dlion.simulate.links import SimLinks
from dlion.simulate.scheduler import Scheduler
from dlion.simulate.transport import VirtualTransport
from dlion.transport import InprocHub, WireLimits

LIMITS = WireLimits(known_senders=frozenset({0, 1, 2}), max_message_bytes=1 << 22, max_batch_weight=64)
RATE, LATENCY = 8e6, 0.010


def network(trace=False, peers=2):
    cfg = parse({"peers": [{"id": p, "port": 47600 + p} for p in range(peers)], "training": {"max_iterations": 1},
                 "links": {"default": {"bandwidth": "8mbit", "latency": "10ms"}}})
    sched, hub, links = Scheduler(trace=trace), InprocHub(), SimLinks(cfg)
    actors = {p: sched.actor(f"peer-{p}") for p in range(peers)}
    limits = WireLimits(frozenset(range(peers)), LIMITS.max_message_bytes, max_batch_weight=64)
    transports = {p: VirtualTransport(p, hub, limits, actors[p], links) for p in range(peers)}
    for t in transports.values():
        t.start()
    return sched, actors, transports


def test_a_gradient_is_collected_when_its_link_delivers_it():
    sched, actors, transports = network()
    grad = np.arange(25_000, dtype=np.float32)
    got = {}

    def sender():
        actors[0].sleep(0.5)  # half a second of compute first: the message leaves at the sender's own time
        transports[0].send(1, messages.GRAD, 0, {"g": grad}, {"w": 32.0})
        got["sent_at"] = sched.clock()

    def receiver():
        msgs = transports[1].mailbox.collect(messages.GRAD, 0, [0], deadline=5.0)
        got["at"], got["grad"] = sched.clock(), msgs[0][0].tensors["g"]

    actors[0].start(sender)
    actors[1].start(receiver)
    sched.run()
    nbytes = transports[0].stats()[1].bytes_sent
    assert nbytes > grad.nbytes
    assert got["sent_at"] == 0.5
    assert got["at"] == pytest.approx(0.5 + 8 * nbytes / RATE + LATENCY)
    np.testing.assert_array_equal(got["grad"], grad)


def test_a_wait_for_a_silent_peer_ends_at_its_deadline_in_virtual_time():
    sched, actors, transports = network()
    ended = []

    def receiver():
        transports[1].mailbox.collect(messages.GRAD, 0, [0], deadline=2.0)
        ended.append(sched.clock())

    actors[1].start(receiver)
    sched.run()
    assert ended == [2.0]


def test_unpaid_work_is_settled_before_the_mailbox_is_read():
    """A peer that computed for 1 s sees what arrived in that second, as if it had waited it out step by step."""
    sched, actors, transports = network()
    seen = []

    def sender():
        transports[0].send(1, messages.EVAL, 0, None, {"acc": 0.5})  # arrives after ~10 ms

    def receiver():
        actors[1].sleep(1.0)
        msg = transports[1].mailbox.latest(messages.EVAL, 0)
        seen.append((sched.now, msg))

    actors[0].start(sender)
    actors[1].start(receiver)
    sched.run()
    (now, msg), = seen
    assert now == 1.0 and msg is not None and msg.meta["acc"] == 0.5


def test_a_bye_travels_behind_what_was_sent_before_it():
    sched, actors, transports = network(trace=True)
    arrivals = []

    def sender():
        transports[0].send(1, messages.GRAD, 0, {"g": np.ones(100_000, np.float32)}, {"w": 1.0})
        transports[0].close()

    def receiver():
        got = transports[1].mailbox.collect(messages.GRAD, 0, [0], deadline=5.0)
        arrivals.append((sched.clock(), sorted(got), 0 in transports[1].mailbox.departed))
        actors[1].wait(5.0)
        arrivals.append((sched.clock(), 0 in transports[1].mailbox.departed))

    actors[0].start(sender)
    actors[1].start(receiver)
    sched.run()
    first, second = arrivals
    assert first[1] == [0] and first[2] is False  # the gradient first, the sender not yet gone
    assert second[1] is True


def test_a_wait_for_several_peers_wakes_once_when_the_last_of_them_is_in():
    """Messages of other kinds, or a second one from a sender already heard from, leave the waiter parked."""
    sched, actors, transports = network(trace=True, peers=3)
    ended = []

    def sender(p, delay):
        def run():
            for r in range(3):
                transports[p].send(1, messages.GRAD, r, {"g": np.ones(10, np.float32)}, {"w": 1.0})
            actors[p].sleep(delay)
            transports[p].send(1, messages.EVAL, 0, None, {"acc": 0.5})
            transports[p].send(1, messages.EVAL, 1, None, {"acc": 0.6})
        return run

    def waiter():
        done = transports[1].mailbox.wait_for(messages.EVAL, 0, [0, 2], deadline=5.0)
        ended.append((done, sched.clock()))

    actors[0].start(sender(0, 0.2))
    actors[2].start(sender(2, 0.5))
    actors[1].start(waiter)
    sched.run()
    (done, at), = ended
    assert done and at == pytest.approx(0.5 + 0.010, abs=1e-3)  # peer 2's figure, sent at 0.5 s, 10 ms away
    assert [label for _, label in sched.trace].count("wake peer-1") == 1


def test_with_the_cpu_meter_the_receiver_pays_for_decoding_what_it_received_before_it_reads_it():
    from dlion.simulate.compute import HostCpu
    import threading
    sched, actors, transports = network()
    paid = []

    def charge(cpu_s):  # the receiver's own work is free here; each decoding on another thread costs it 1 s
        if threading.current_thread() is not actors[1].thread:
            paid.append(cpu_s)
            actors[1].sleep(1.0)

    actors[1].meter = HostCpu(charge)
    got = {}

    def sender():
        transports[0].send(1, messages.GRAD, 0, {"g": np.ones(25_000, np.float32)}, {"w": 32.0})

    def receiver():
        msgs = transports[1].mailbox.collect(messages.GRAD, 0, [0], deadline=5.0)
        got["read"], got["msgs"] = sched.now, msgs

    actors[0].start(sender)
    actors[1].start(receiver)
    sched.run()
    arrival = 8 * transports[0].stats()[1].bytes_sent / RATE + LATENCY
    assert len(paid) == 1 and paid[0] > 0
    assert got["read"] == pytest.approx(arrival + 1.0)  # it read the message after paying for its decoding
    assert got["msgs"][0][0].tensors["g"].size == 25_000
