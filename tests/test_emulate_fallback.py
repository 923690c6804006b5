"""Fallback emulation inside a peer: links shaped from the config, compute duty-cycled, schedule applied on time."""
from dlion import config
from dlion.emulate.fallback import FallbackEmulation

CFG = config.parse({
    "peers": [{"id": 0, "port": 47000, "cores": 0.25, "uplink": "50mbit", "latency": "10ms"},
              {"id": 1, "port": 47001, "cores": 2.0, "downlink": "1gbit", "latency": "1ms"},
              {"id": 2, "port": 47002}],
    "training": {"max_seconds": 60},
    "emulation": {"method": "fallback"},
    "schedule": [{"at": "30s", "peer": 0, "cores": 1.0}, {"at": "30s", "src": 0, "dst": 1, "bandwidth": "10mbit"},
                 {"at": "20s", "peer": 1, "cores": 0.5}],
})


class RecordingTransport:
    def __init__(self):
        self.links = {}

    def set_link(self, dst, bandwidth_bps, latency_s):
        self.links[dst] = (bandwidth_bps, latency_s)


def test_start_shapes_every_outgoing_link_from_the_config():
    transport = RecordingTransport()
    FallbackEmulation(CFG, 0, transport).start()
    assert transport.links[1][0] == 5e7 and abs(transport.links[1][1] - 0.011) < 1e-9
    assert transport.links[2] == (5e7, 0.010)


def test_throttle_holds_the_configured_share_of_the_peer_threads():
    sleeps = []
    emulation = FallbackEmulation(CFG, 0, RecordingTransport(), sleep=sleeps.append)
    emulation.throttle(0.1, 0.1)  # 0.25 cores: 0.1 CPU-s owes 0.4 s, 0.1 s of it spent computing
    assert abs(sleeps[0] - 0.3) < 1e-9
    emulation.throttle(0.05, 0.1)  # a contended step used less CPU, so it owes less idling
    assert abs(sleeps[1] - 0.1) < 1e-9
    full = FallbackEmulation(CFG, 1, RecordingTransport(), sleep=sleeps.append)
    full.throttle(0.2, 0.1)  # 2 cores, two busy threads: within quota, no idling
    assert len(sleeps) == 2


def test_schedule_is_applied_when_due_and_only_once():
    transport = RecordingTransport()
    sleeps = []
    emulation = FallbackEmulation(CFG, 0, transport, sleep=sleeps.append)
    emulation.start()
    assert emulation.update(29.9) == []
    applied = emulation.update(30.0)
    assert len(applied) == 2 and emulation.cores == 1.0 and transport.links[1][0] == 1e7
    assert emulation.update(100.0) == []
    emulation.throttle(0.1, 0.1)
    assert sleeps == []  # 1 core on 1 thread: unthrottled after the change


def test_latency_only_leaves_bandwidth_and_cpu_to_the_kernel():
    transport = RecordingTransport()
    sleeps = []
    emulation = FallbackEmulation(CFG, 0, transport, sleep=sleeps.append, latency_only=True)
    emulation.start()
    assert transport.links[1] == (None, transport.links[1][1]) and abs(transport.links[1][1] - 0.011) < 1e-9
    emulation.throttle(0.1, 0.1)
    assert sleeps == []
    assert [c.is_link for c in emulation.update(31)] == [True]  # the cores change is the cgroup's business
    assert transport.links[1][0] is None


def test_in_process_says_what_a_peer_emulates_itself():
    import dataclasses
    from dlion.config import Emulation
    from dlion.emulate.fallback import in_process

    def method(**kw):
        return in_process(dataclasses.replace(CFG, emulation=Emulation(**kw)), 0, RecordingTransport())

    assert method(method="fallback").latency_only is False
    assert method(method="auto").latency_only is False  # a lone peer with auto: in-process
    assert method(method="real", transport_latency=True).latency_only is True
    assert method(method="real") is None and method(method="none") is None
