"""Emulation inside a peer: links shaped from the config, compute paced, schedule applied on time."""
import math

import pytest

from dlion import config
from dlion.emulate.fallback import InProcessEmulation
from tests.test_emulate_pacing import FakeTime

CFG = config.parse({
    "peers": [{"id": 0, "port": 47000, "cores": 0.25, "uplink": "50mbit", "latency": "10ms"},
              {"id": 1, "port": 47001, "cores": 2.0, "downlink": "1gbit", "latency": "1ms"},
              {"id": 2, "port": 47002}],
    "training": {"max_seconds": 60},
    "emulation": {"method": "fallback"},
    "schedule": [{"at": "30s", "peer": 0, "cores": 1.0}, {"at": "30s", "src": 0, "dst": 1, "bandwidth": "10mbit"},
                 {"at": "20s", "peer": 1, "cores": 0.5}],
})


def test_start_shapes_every_outgoing_link_from_the_config():
    emulation = InProcessEmulation(CFG, 0, renice=lambda nice: None)
    emulation.start()
    links = emulation.link_policy.shaped()
    assert links[1][0] == 5e7 and abs(links[1][1] - 0.011) < 1e-9
    assert links[2] == (5e7, 0.010)


def emulation_of(peer_id, t, **kwargs):
    return InProcessEmulation(CFG, peer_id, sleep=t.sleep, clock=t.clock, cpu_clock=t.cpu_clock, **kwargs)


def test_a_step_is_paced_to_the_configured_cores():
    t = FakeTime()
    emulation = emulation_of(0, t)
    assert t.emulated_step(emulation, 0.1, 0.1) == pytest.approx(0.3)  # 0.25 cores: 0.1 CPU-s take 0.4 s
    t.now += 1.0  # a wait, then the next step
    assert t.emulated_step(emulation_of(1, t), 0.2, 0.1) == 0.0  # 2 cores, two busy threads


def test_schedule_is_applied_when_due_and_only_once():
    t = FakeTime()
    nices = []
    emulation = emulation_of(0, t, renice=nices.append)
    emulation.start()
    assert emulation.update(29.9) == []  # peer 1's change is not this peer's, but reweighs it
    applied = emulation.update(30.0)
    assert len(applied) == 2 and emulation.cores == 1.0 and emulation.link_policy.shaped()[1][0] == 1e7
    assert [sorted(c) for c in emulation.changes()] == [["at", "cores", "peer"], ["at", "bandwidth", "dst", "src"]]
    assert emulation.changes() == []  # reported once
    # 0.25 against 2 cores: 1.25^9 ~ 8; peer 1 drops to 0.5 at 20 s: 0.25 against 1 (peer 2); then 1.0 against 1
    assert nices == [9, 6, 0]
    assert emulation.pacer.phase == 0.0  # first in line
    assert emulation.update(100.0) == []
    t.now += 0.1
    assert t.emulated_step(emulation, 0.1, 0.1) == 0.0  # 1 core on 1 thread: unthrottled after the change


def test_under_the_real_method_the_kernel_shapes_bandwidth_and_the_peer_paces_compute():
    for shaping, shaped in (("latency", True), ("none", False)):
        t = FakeTime()
        emulation = emulation_of(0, t, shaping=shaping)
        emulation.start()
        if shaped:  # a kernel without netem: the transport adds the latency
            assert emulation.link_policy.shaped()[1] == (math.inf, pytest.approx(0.011))
        else:
            assert emulation.link_policy is None
        t.now += 0.2
        assert t.emulated_step(emulation, 0.1, 0.1) == pytest.approx(0.3)
        assert [c.is_link for c in emulation.update(31)] == ([False, True] if shaped else [False])
        assert emulation.cores == 1.0
        assert not shaped or emulation.link_policy.shaped()[1][0] == math.inf  # the bandwidth is the kernel's


def test_nice_values_weigh_peers_like_their_cores():
    from dlion.emulate.fallback import nice_for
    hetero = config.parse({"peers": [{"id": i, "port": 47000 + i, "cores": c} for i, c in
                                     enumerate((1.0, 0.5, 0.3, 0.2))], "training": {"max_seconds": 60}})
    assert [nice_for(hetero, p) for p in range(4)] == [0, 3, 5, 7]  # 1.25^3 ~ 2, 1.25^5 ~ 3.05, 1.25^7 ~ 4.8


def test_bursts_of_peers_sharing_a_cpu_are_laid_end_to_end():
    from dlion.emulate.fallback import burst_phase
    hetero = config.parse({"peers": [{"id": i, "port": 47000 + i, "cores": c} for i, c in
                                     enumerate((1.0, 0.5, 0.3, 0.2))], "training": {"max_seconds": 60}})
    assert [burst_phase(hetero, p) for p in range(4)] == pytest.approx([0.0, 0.0, 0.5, 0.8])


def test_a_cores_change_of_another_peer_moves_the_bursts():
    emulation = InProcessEmulation(CFG, 2, renice=lambda nice: None)
    emulation.start()
    assert emulation.pacer.phase == pytest.approx(0.25)  # after peer 0's 0.25 and peer 1's 2 cores
    assert emulation.update(20.0) == []  # peer 1 drops to 0.5: nothing of peer 2's own
    assert emulation.pacer.phase == pytest.approx(0.75)


def test_in_process_says_what_a_peer_emulates_itself():
    import dataclasses
    from dlion.config import Emulation
    from dlion.emulate.fallback import for_peer

    def method(**kw):
        return for_peer(dataclasses.replace(CFG, emulation=Emulation(**kw)), 0)

    assert method(method="fallback").shaping == "rate-and-latency"
    assert method(method="auto").shaping == "rate-and-latency"  # a lone peer with auto: in-process
    assert method(method="auto").method == "fallback"
    assert method(method="real", transport_latency=True).shaping == "latency"
    assert method(method="real").shaping == "none"  # compute is paced under both methods
    assert method(method="none") is None


def test_a_peer_below_one_core_takes_turns_on_its_shared_cpu_until_a_change_gives_it_a_core(tmp_path):
    from dlion.emulate.turns import lock_path
    t = FakeTime()
    pinned = []
    emulation = emulation_of(0, t, turns_dir=tmp_path, renice=lambda nice: None, pin=pinned.append,
                             cpus={0, 1, 2, 3})
    emulation.start()
    assert emulation.pacer.turn.path == lock_path(tmp_path, 0)  # peers 1 and 2 have whole cores
    assert pinned == [{3}]  # after peer 1's two CPUs and peer 2's one
    t.emulated_step(emulation, 0.1, 0.1)
    assert not emulation.pacer.turn.held  # a step after a wait idles at once, and gives its turn up first
    emulation.update(20.0)  # peer 1 drops to 0.5: three of the peer's four CPUs are shared, the larger share first
    assert emulation.pacer.turn.path == lock_path(tmp_path, 1) and pinned[-1] == {2}
    emulation.update(30.0)  # now 1.0 core: a CPU of its own
    assert emulation.pacer.turn is None and pinned[-1] == {0}
    assert emulation_of(0, t, renice=lambda nice: None).pacer.turn is None  # no turns without a directory
    emulation.close()
    crowded = emulation_of(0, t, turns_dir=tmp_path, renice=lambda nice: None, pin=pinned.append, cpus={0, 1})
    crowded.start()  # three whole cores booked on two CPUs: the kernel places everyone
    assert pinned[-1] == {0, 1}
    crowded.close()
