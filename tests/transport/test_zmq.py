"""ZeroMQ transport on 127.0.0.1: exchange, barrier, fault injection, dead peers, restart with handover."""
import signal
import socket
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from conftest import in_threads
from dlion.transport import Sparse, WireLimits, ZmqTransport, encode
from dlion.transport.zmq import routing_id

LIMIT = 1 << 16
PEERS = frozenset({0, 1, 2})


def wait_until(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def endpoints(ports):
    return {i: ("127.0.0.1", p) for i, p in zip(sorted(PEERS), ports(len(PEERS)))}


@pytest.fixture
def make(endpoints):
    made = []

    def make(peer_id, start=True, peers=PEERS, limit=LIMIT, sndhwm=16, heartbeat=None, listen=None):
        t = ZmqTransport(peer_id, {p: endpoints[p] for p in peers}, WireLimits(peers, limit), sndhwm=sndhwm,
                         heartbeat=heartbeat, listen=listen)
        made.append(t)
        if start:
            t.start()
        return t

    yield make
    for t in made:
        t.close()


@pytest.fixture
def raw_dealer(endpoints):
    """A bare DEALER with a chosen routing id, connected to peer 0: the attacker or the buggy peer."""
    ctx = zmq.Context()
    socks = []

    def connect(identity):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, identity)
        s.connect("tcp://%s:%d" % endpoints[0])
        socks.append(s)
        return s

    yield connect
    for s in socks:
        s.close()
    ctx.term()


def barrier_all(transports, timeout_s):
    """Run wait_for_peers on every transport at once; {peer_id: result}."""
    by_id = {t.peer_id: t for t in transports}
    return in_threads(lambda p: by_id[p].wait_for_peers(timeout_s), by_id)


def test_three_peers_exchange_dense_and_sparse(make):
    ts = [make(i) for i in sorted(PEERS)]
    assert barrier_all(ts, 5) == {i: PEERS - {i} for i in PEERS}
    g = np.linspace(0, 1, 1000, dtype=np.float32)
    for t in ts:
        for dst in t.peers:
            t.send(dst, "gossip", 1, {"owed": g * t.peer_id,
                                      "x": Sparse(np.array([t.peer_id, 999], np.uint32),
                                                  np.array([1.0, 2.0], np.float16), 1000)},
                   {"e": 1, "n": 1, "w": float(t.peer_id + 1)})
    for t in ts:
        got = t.mailbox.take("gossip", 1, t.peers, time.monotonic() + 3)
        assert sorted(got) == sorted(t.peers)
        for s, m in got.items():
            np.testing.assert_array_equal(m.tensors["owed"], g * s)
            assert m.tensors["x"].indices.tolist() == [s, 999] and m.meta == {"e": 1, "n": 1, "w": float(s + 1)}
    st = ts[0].stats()[1]
    assert st.msgs_sent >= 2 and st.msgs_received >= 2 and st.dropped == 0


def test_barrier_with_a_peer_started_half_a_second_later(make):
    ts = [make(0), make(1), make(2, start=False)]
    threading.Timer(0.5, ts[2].start).start()
    t0 = time.monotonic()
    assert barrier_all(ts, 5) == {i: PEERS - {i} for i in PEERS}
    assert time.monotonic() - t0 < 2.0


def _probe(sender, **tensors):
    return encode("probe", sender, 0, tensors)


def _bad_index():
    frames = _probe(1, s=Sparse(np.array([3], np.uint32), np.ones(1, np.float32), 10))
    return [frames[0], np.array([10], np.uint32).tobytes(), frames[2]]


FAULTS = {
    "malformed header": lambda: [b"\xc1\x00", b"x"],
    "frame size mismatch": lambda: [_probe(1, g=np.zeros(4, np.float32))[0], b"\0" * 15],
    "index out of range": _bad_index,
    "spoofed sender": lambda: _probe(2),
    "oversized": lambda: _probe(1, g=np.zeros(LIMIT // 4 + 100, np.float32)),
    "unknown kind": lambda: [msgpack.packb({"v": 1, "k": "pwn", "s": 1, "r": 0, "m": {}, "t": []})],
}


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_is_dropped_counted_and_the_link_survives(make, raw_dealer, fault):
    t = make(0)
    dealer = raw_dealer(routing_id(1, 7))
    frames = FAULTS[fault]()
    assert sum(len(bytes(f)) for f in frames) < 2 * LIMIT
    dealer.send_multipart(frames, copy=True)
    wait_until(lambda: t.stats()[1].dropped == 1)
    dealer.send_multipart(_probe(1, payload=np.ones(3, np.float32)))
    got = t.mailbox.take("probe", 0, [1], time.monotonic() + 3)
    assert got[1].tensors["payload"].tolist() == [1.0, 1.0, 1.0]
    assert t.stats()[1].msgs_received == 2


@pytest.mark.parametrize("identity", [b"99.1", b"01.1", b"0.1", b"1", b"1.x", b"\x00abc"])
def test_unknown_routing_id_is_dropped_as_unknown(make, raw_dealer, identity):
    t = make(0)
    raw_dealer(identity).send_multipart(_probe(1))
    wait_until(lambda: "unknown" in t.stats() and t.stats()["unknown"].dropped == 1)
    assert t.mailbox.latest("probe", 1) is None
    raw_dealer(routing_id(1, 7)).send_multipart(_probe(1))
    wait_until(lambda: t.mailbox.latest("probe", 1) is not None)


def test_send_to_a_peer_that_never_started_does_not_block(make):
    t = make(0)
    t0 = time.monotonic()
    for r in range(100):
        t.send(1, "probe", r, {"payload": np.zeros(1000, np.float32)})
    assert time.monotonic() - t0 < 0.5
    wait_until(lambda: t.stats()[1].send_failed == 100)
    assert t.stats()[1].msgs_sent == 0


def test_close_returns_quickly_with_dead_and_stuck_peers(make, endpoints):
    a, b = make(0), make(1)
    b.close()  # dead peer
    ctx = zmq.Context()
    stuck = ctx.socket(zmq.ROUTER)  # a live peer 2 that never reads
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.bind("tcp://%s:%d" % endpoints[2])
    try:
        big = np.zeros(LIMIT // 4 - 100, np.float32)
        for r in range(200):
            a.send(1, "model", r, {"x": big})
            a.send(2, "model", r, {"x": big})
        wait_until(lambda: a.stats()[2].send_failed > 0)
        t0 = time.monotonic()
        a.close()
        assert time.monotonic() - t0 < 2.0
        a.close()
    finally:
        stuck.close()
        ctx.term()


def test_bye_gets_through_behind_a_full_queue(make):
    pair = frozenset({0, 1})
    a, b = make(0, peers=pair, limit=1 << 21, sndhwm=1), make(1, peers=pair, limit=1 << 21)
    assert barrier_all([a, b], 3) == {0: {1}, 1: {0}}
    w = np.zeros(1 << 18, np.float32)
    for r in range(20):
        a.send(1, "model", r, {"x": w})
    wait_until(lambda: a.stats()[1].send_failed > 0)  # the queue to b is full
    a.close()
    wait_until(lambda: 0 in b.mailbox.departed)


def test_restarted_peer_takes_over_its_routing_id(make):
    pair = frozenset({0, 1})
    a, b = make(0, peers=pair), make(1, peers=pair)
    assert barrier_all([a, b], 3) == {0: {1}, 1: {0}}
    b.close()
    wait_until(lambda: 1 in a.mailbox.departed)
    b2 = make(1, peers=pair)
    assert b2.wait_for_peers(3) == {0}, "peer 0 answers hellos after its own barrier"
    b2.send(0, "probe", 7, {"payload": np.ones(2, np.float32)})
    wait_until(lambda: 1 not in a.mailbox.departed)  # its first message after the hellos re-admits it
    assert a.mailbox.take("probe", 7, [1], time.monotonic() + 3)[1].tensors["payload"].tolist() == [1.0, 1.0]
    a.send(1, "probe", 8)
    assert 0 in b2.mailbox.take("probe", 8, [0], time.monotonic() + 3)
    assert 1 not in a.mailbox.departed


def test_restart_while_the_old_connection_still_looks_alive(make, raw_dealer):
    """A crashed peer's TCP connection may linger; without ROUTER_HANDOVER its successor would be refused."""
    pair = frozenset({0, 1})
    a = make(0, peers=pair)
    old = raw_dealer(routing_id(1, 1))  # an earlier incarnation of peer 1
    old.send_multipart(_probe(1))
    wait_until(lambda: a.mailbox.latest("probe", 1) is not None)
    b = make(1, peers=pair)
    assert b.wait_for_peers(3) == {0}
    b.send(0, "probe", 5)
    assert 1 in a.mailbox.take("probe", 5, [1], time.monotonic() + 3)


def test_a_connection_reusing_a_live_peers_routing_id_cannot_take_its_link_over(make, raw_dealer):
    pair = frozenset({0, 1})
    a, b = make(0, peers=pair), make(1, peers=pair)
    assert barrier_all([a, b], 3) == {0: {1}, 1: {0}}
    intruder = raw_dealer(routing_id(1, b.incarnation))  # connects with peer 1's exact id, and stays silent
    intruder.send_multipart(_probe(1, payload=np.full(1, 66.0, np.float32)))
    time.sleep(0.3)
    for r in range(3):
        b.send(0, "probe", 10 + r, {"payload": np.full(1, float(r), np.float32)})
        assert a.mailbox.take("probe", 10 + r, [1], time.monotonic() + 3)[1].tensors["payload"].tolist() == [r]
    assert a.mailbox.latest("probe", 1).round == 12  # the intruder's probe (round 0) never arrived
    assert 1 not in a.mailbox.departed


def test_bind_failure_is_reported(make, endpoints):
    blocker = socket.socket()
    blocker.bind(endpoints[0])
    blocker.listen()
    try:
        t = make(0, start=False)
        with pytest.raises(RuntimeError, match="cannot bind tcp://127.0.0.1"):
            t.start()
        t0 = time.monotonic()
        t.close()
        assert time.monotonic() - t0 < 1.0
    finally:
        blocker.close()


def test_a_peer_listening_on_every_interface_is_reached_at_its_configured_address(make, endpoints):
    """As in a swarm, where a peer's configured address is a name it cannot bind: it binds 0.0.0.0 on its port, and
    the others connect to the address they are given (here 127.0.0.1)."""
    ts = [make(0, listen="0.0.0.0"), make(1), make(2)]
    assert barrier_all(ts, 5) == {i: PEERS - {i} for i in PEERS}
    for src in (1, 2):
        ts[src].send(0, "probe", 1)
    assert sorted(ts[0].mailbox.take("probe", 1, {1, 2}, time.monotonic() + 3)) == [1, 2]
    port = endpoints[0][1]
    socket.create_connection(("127.0.0.2", port), 3).close()  # every interface: not only the configured address
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", endpoints[1][1]), 3).close()  # peer 1 binds its address only


def test_bad_peer_endpoint_is_reported(endpoints):
    t = ZmqTransport(0, {0: endpoints[0], 1: ("127.0.0.1", -1)}, WireLimits(frozenset({0, 1}), LIMIT))
    with pytest.raises(RuntimeError, match="127.0.0.1:-1"):
        t.start()
    t.close()


def test_send_to_self_or_stranger_raises(make):
    t = make(0)
    for dst in (0, 5):
        with pytest.raises(ValueError):
            t.send(dst, "probe", 0)


def test_a_peer_whose_connection_drops_without_a_bye_is_departed_until_it_speaks_again(make, endpoints):
    pair = frozenset({0, 1})
    t0 = make(0, peers=pair)
    stand_in = zmq.Context.instance().socket(zmq.ROUTER)  # peer 1's endpoint, as a process we can kill
    stand_in.bind(f"tcp://127.0.0.1:{endpoints[1][1]}")
    try:
        wait_until(lambda: (t0.send(1, "ack", 0), stand_in.poll(50))[1])  # the connection is up
        assert 1 not in t0.mailbox.departed
    finally:
        stand_in.close(linger=0)  # what the kernel does to a SIGKILLed peer's sockets: no bye
    wait_until(lambda: 1 in t0.mailbox.departed)
    late = zmq.Context.instance().socket(zmq.DEALER)  # the dead process's last message, still draining to us
    late.setsockopt(zmq.IDENTITY, routing_id(1, 1))
    late.connect(f"tcp://127.0.0.1:{endpoints[0][1]}")
    try:
        late.send_multipart(_probe(1))
        wait_until(lambda: t0.mailbox.latest("probe", 1) is not None)
        assert 1 in t0.mailbox.departed  # filed, but nobody waits for a peer we cannot reach
    finally:
        late.close(linger=0)
    t1 = make(1, peers=pair)  # the restarted peer: once our connection to it is up, its first message re-admits it
    wait_until(lambda: (t1.send(0, "ack", 1), time.sleep(0.05), 1 not in t0.mailbox.departed)[2])


STAND_IN = """
import sys, time, zmq
router = zmq.Context().socket(zmq.ROUTER)
router.bind(sys.argv[1])
print("up", flush=True)
while True:
    if router.poll(100):
        router.recv_multipart()
"""


def test_a_frozen_peer_whose_connections_stay_open_is_departed_within_the_heartbeat_timeout(make, endpoints):
    """SIGSTOP stands in for a host that vanished: the kernel keeps its TCP connections open, no disconnect comes;
    only the missing answers to the pings tell."""
    import subprocess
    import sys
    pair = frozenset({0, 1})
    stand_in = subprocess.Popen([sys.executable, "-c", STAND_IN, f"tcp://127.0.0.1:{endpoints[1][1]}"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert stand_in.stdout.readline().strip() == "up"
        t0 = make(0, peers=pair, heartbeat=(0.1, 0.6))
        wait_until(lambda: t0.send(1, "ack", 0) or t0.stats()[1].msgs_sent > 0)
        time.sleep(1.5)  # more than twice the timeout: a live peer is never suspected
        assert 1 not in t0.mailbox.departed
        stand_in.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        wait_until(lambda: 1 in t0.mailbox.departed, timeout=5)
        assert time.monotonic() - frozen < 0.6 + 0.1 + 1.0  # timeout + interval + scheduling slack
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_live_peer_behind_a_saturated_link_is_not_suspected(make, endpoints):
    """Peer 1 stops reading: every buffer between the two fills and peer 0's sends back up. The pings travel on a
    connection of their own, so nothing queues in front of them and peer 1 still answers."""
    pair = frozenset({0, 1})
    stand_in = zmq.Context.instance().socket(zmq.ROUTER)  # peer 1, too busy to read
    stand_in.setsockopt(zmq.RCVHWM, 1)
    stand_in.setsockopt(zmq.RCVBUF, 4096)
    stand_in.bind(f"tcp://127.0.0.1:{endpoints[1][1]}")
    try:
        t0 = make(0, peers=pair, limit=1 << 20, sndhwm=4, heartbeat=(0.1, 0.5))
        payload = {"g": np.ones(200_000, np.float32)}
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            t0.send(1, "grad", 0, payload)
            time.sleep(0.005)
        assert t0.stats()[1].send_failed > 0  # the link is saturated: the queue towards peer 1 was full
        assert 1 not in t0.mailbox.departed
    finally:
        stand_in.close(linger=0)


def test_a_held_message_is_polled_for_in_whole_milliseconds_and_its_last_fraction_is_slept():
    from dlion.transport.zmq import _poll_ms_until

    now = time.monotonic()
    assert _poll_ms_until(now + 0.0057) == 5  # rounded down: woken early, then the rest is slept
    assert _poll_ms_until(now - 1.0) == 0  # overdue
    before = time.monotonic()
    assert _poll_ms_until(before + 0.0006) == 0
    assert time.monotonic() >= before + 0.0006  # slept out, not rounded up to a millisecond of poll
