"""Held messages: the holdback queue, then an emulated link's rate and latency as seen through the ZMQ and in-process
transports (the link policy comes from `dlion.emulate.links`)."""
import time

import numpy as np
import pytest

from conftest import in_threads
from dlion.emulate.links import ShapedLinks
from dlion.transport import InprocHub, InprocTransport, WireLimits, ZmqTransport, encode
from dlion.transport.shaping import Holdback

MBIT = 1e6
LIMITS = WireLimits(known_senders=frozenset({0, 1}), max_message_bytes=1 << 20)
PAYLOAD = {"payload": np.zeros(25_000, np.float32)}  # 100 kB of values
PAYLOAD_BYTES = sum(memoryview(f).nbytes for f in encode("probe", 0, 0, PAYLOAD))


def shape(transport, dst, bandwidth_bps, latency_s):
    """Shape the transport's link to `dst` (an emulated link policy, attached on first use)."""
    if not isinstance(transport.link_policy, ShapedLinks):
        transport.link_policy = ShapedLinks()
    transport.link_policy.set(dst, bandwidth_bps, latency_s)


def test_holdback_releases_in_time_order_and_keeps_ties_in_order():
    h = Holdback()
    for release, item in [(2.0, "c"), (1.0, "a"), (1.0, "b"), (3.0, "d")]:
        h.push(release, item)
    assert h.next_release() == 1.0
    assert h.pop_due(0.5) == []
    assert h.pop_due(2.0) == ["a", "b", "c"]
    assert h.drain() == ["d"] and len(h) == 0 and h.next_release() is None


# ---- through the transports --------------------------------------------------------------------------------

def send_and_time(src, dst, n, tensors=PAYLOAD, first_round=0):
    """Send n messages src -> dst back to back; seconds until the last one is in dst's mailbox."""
    start = time.monotonic()
    for r in range(first_round, first_round + n):
        src.send(dst.peer_id, "probe", r, tensors)
    last = first_round + n - 1
    got = dst.mailbox.take("probe", last, [src.peer_id], start + 5)
    assert src.peer_id in got, "message did not arrive"
    return time.monotonic() - start


def expected_s(n, nbytes, bandwidth_bps, latency_s):
    return n * nbytes * 8 / bandwidth_bps + latency_s


@pytest.fixture
def zmq_pair(ports):
    endpoints = dict(zip([0, 1], (("127.0.0.1", p) for p in ports(2))))
    pair = [ZmqTransport(i, endpoints, LIMITS) for i in (0, 1)]
    for t in pair:
        t.start()
    assert in_threads(lambda i: pair[i].wait_for_peers(3), [0, 1]) == {0: {1}, 1: {0}}  # connected before timing
    time.sleep(0.2)  # lets the barrier's trailing hello answers pass, so stats deltas count only the test's sends
    yield pair
    for t in pair:
        t.close()


def test_zmq_shaped_link_throughput_latency_and_rate_change(zmq_pair):
    a, b = zmq_pair
    before = a.stats()[1]  # the barrier's hellos
    shape(a, 1, 8 * MBIT, 0.02)

    one_way = send_and_time(a, b, 1, tensors=None)
    assert 0.015 <= one_way <= 0.040

    took = send_and_time(a, b, 10, first_round=1)
    assert took == pytest.approx(expected_s(10, PAYLOAD_BYTES, 8 * MBIT, 0.02), rel=0.15)

    reverse = send_and_time(b, a, 10)
    assert reverse < 0.1  # unshaped: loopback speed

    shape(a, 1, 40 * MBIT, None)
    took = send_and_time(a, b, 10, first_round=11)
    assert took == pytest.approx(expected_s(10, PAYLOAD_BYTES, 40 * MBIT, 0.02), rel=0.15)
    assert a.link_policy.shaped() == {1: (40 * MBIT, 0.02)}
    after = a.stats()[1]
    assert (after.msgs_sent - before.msgs_sent, after.send_failed - before.send_failed) == (1 + 20, 0)


def test_zmq_close_is_prompt_drops_held_messages_and_bye_bypasses_shaping(zmq_pair):
    a, b = zmq_pair
    failed_before = a.stats()[1].send_failed
    shape(a, 1, 8_000, 0.5)  # the payload would take 100 s
    a.send(1, "probe", 1, PAYLOAD)
    a.send(1, "probe", 2, PAYLOAD)
    time.sleep(0.05)
    start = time.monotonic()
    a.close()
    assert time.monotonic() - start < 0.5
    assert a.stats()[1].send_failed - failed_before == 2
    deadline = time.monotonic() + 1
    while 0 not in b.mailbox.departed and time.monotonic() < deadline:
        time.sleep(0.005)
    assert 0 in b.mailbox.departed
    assert b.mailbox.latest("probe", 0) is None


@pytest.fixture
def inproc_pair():
    hub = InprocHub()
    pair = [InprocTransport(i, hub, LIMITS) for i in (0, 1)]
    for t in pair:
        t.start()
    yield pair
    for t in pair:
        t.close()


def test_inproc_shaped_link_throughput_and_unshaped_reverse(inproc_pair):
    a, b = inproc_pair
    shape(a, 1, 16 * MBIT, 0.02)
    took = send_and_time(a, b, 10)
    assert took == pytest.approx(expected_s(10, PAYLOAD_BYTES, 16 * MBIT, 0.02), rel=0.15)
    assert send_and_time(b, a, 10) < 0.05


def test_inproc_close_drops_held_messages_and_still_says_bye(inproc_pair):
    a, b = inproc_pair
    shape(a, 1, 8_000, 0.5)
    a.send(1, "probe", 1, PAYLOAD)
    start = time.monotonic()
    a.close()
    assert time.monotonic() - start < 0.1
    assert a.stats()[1].send_failed == 1
    assert 0 in b.mailbox.departed and b.mailbox.latest("probe", 0) is None
