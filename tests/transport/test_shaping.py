"""Link shaping: the serialization-queue math, then rate and latency as seen through the ZMQ and in-process
transports."""
import math
import time

import numpy as np
import pytest

from conftest import in_threads
from dlion.transport import InprocHub, InprocTransport, WireLimits, ZmqTransport, encode
from dlion.transport.shaping import Holdback, LinkShaper

MBIT = 1e6
LIMITS = WireLimits(known_senders=frozenset({0, 1}), max_message_bytes=1 << 20)
PAYLOAD = {"g": np.zeros(25_000, np.float32)}  # 100 kB of values
PAYLOAD_BYTES = sum(memoryview(f).nbytes for f in encode("grad", 0, 0, PAYLOAD))


# ---- LinkShaper math ---------------------------------------------------------------------------------------

def test_one_message_takes_its_bytes_at_the_rate_plus_latency():
    s = LinkShaper(8 * MBIT, 0.02)
    assert s.release_at(100_000, now=10.0) == pytest.approx(10.0 + 0.1 + 0.02)
    assert s.backlog_s(10.0) == pytest.approx(0.1)
    assert s.backlog_s(10.05) == pytest.approx(0.05)
    assert s.backlog_s(11.0) == 0.0


def test_back_to_back_messages_queue_and_latency_is_added_once():
    s = LinkShaper(8 * MBIT, 0.02)
    releases = [s.release_at(100_000, now=0.0) for _ in range(10)]
    assert releases == pytest.approx([0.1 * (i + 1) + 0.02 for i in range(10)])
    assert s.backlog_s(0.0) == pytest.approx(1.0)


def test_an_idle_link_does_not_bank_credit():
    s = LinkShaper(8 * MBIT, 0.0)
    s.release_at(100_000, now=0.0)
    assert s.release_at(100_000, now=5.0) == pytest.approx(5.1)


def test_a_rate_change_applies_to_later_messages_only():
    s = LinkShaper(8 * MBIT, 0.01)
    first = s.release_at(100_000, now=0.0)
    s.set(bandwidth_bps=80 * MBIT)
    assert first == pytest.approx(0.11)
    assert s.release_at(100_000, now=0.0) == pytest.approx(0.1 + 0.01 + 0.01)  # queued behind the first
    assert (s.bandwidth_bps, s.latency_s) == (80 * MBIT, 0.01)


def test_a_latency_cut_never_reorders_the_link():
    s = LinkShaper(8 * MBIT, 0.5)
    first = s.release_at(1_000, now=0.0)
    s.set(latency_s=0.0)
    assert s.release_at(1_000, now=0.0) == first
    assert s.release_at(1_000, now=1.0) == pytest.approx(1.001)


def test_zero_size_messages_only_see_latency_and_the_queue():
    s = LinkShaper(8 * MBIT, 0.02)
    assert s.release_at(0, now=1.0) == pytest.approx(1.02)
    s.release_at(100_000, now=1.0)
    assert s.release_at(0, now=1.0) == pytest.approx(1.12)


def test_unlimited_rate_and_bad_values():
    assert LinkShaper(math.inf, 0.02).release_at(10**9, now=1.0) == pytest.approx(1.02)
    for bad in [dict(bandwidth_bps=0), dict(bandwidth_bps=-1), dict(bandwidth_bps=math.nan),
                dict(latency_s=-0.1), dict(latency_s=math.inf)]:
        with pytest.raises(ValueError):
            LinkShaper(8 * MBIT, 0.0).set(**bad)


def test_holdback_releases_in_time_order_and_keeps_ties_in_order():
    h = Holdback()
    for release, item in [(2.0, "c"), (1.0, "a"), (1.0, "b"), (3.0, "d")]:
        h.push(release, item)
    assert h.next_release() == 1.0
    assert h.pop_due(0.5) == []
    assert h.pop_due(2.0) == ["a", "b", "c"]
    assert h.drain() == ["d"] and len(h) == 0 and h.next_release() is None


def test_set_link_validates_and_reports():
    t = InprocTransport(0, InprocHub(), LIMITS)
    with pytest.raises(ValueError):
        t.set_link(0, 8 * MBIT, 0.0)
    with pytest.raises(ValueError):
        t.set_link(1, -1, 0.0)
    assert t.shaped_links() == {}
    t.set_link(1, None, 0.02)
    assert t.shaped_links() == {1: (math.inf, 0.02)}
    t.set_link(1, 8 * MBIT, None)
    assert t.shaped_links() == {1: (8 * MBIT, 0.02)}


# ---- through the transports --------------------------------------------------------------------------------

def send_and_time(src, dst, n, tensors=PAYLOAD, first_round=0):
    """Send n messages src -> dst back to back; seconds until the last one is in dst's mailbox."""
    start = time.monotonic()
    for r in range(first_round, first_round + n):
        src.send(dst.peer_id, "grad", r, tensors)
    last = first_round + n - 1
    got = dst.mailbox.take("grad", last, [src.peer_id], start + 5)
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
    a.set_link(1, 8 * MBIT, 0.02)

    one_way = send_and_time(a, b, 1, tensors=None)
    assert 0.015 <= one_way <= 0.040

    took = send_and_time(a, b, 10, first_round=1)
    assert took == pytest.approx(expected_s(10, PAYLOAD_BYTES, 8 * MBIT, 0.02), rel=0.15)

    reverse = send_and_time(b, a, 10)
    assert reverse < 0.1  # unshaped: loopback speed

    a.set_link(1, 40 * MBIT, None)
    took = send_and_time(a, b, 10, first_round=11)
    assert took == pytest.approx(expected_s(10, PAYLOAD_BYTES, 40 * MBIT, 0.02), rel=0.15)
    assert a.shaped_links() == {1: (40 * MBIT, 0.02)}
    after = a.stats()[1]
    assert (after.msgs_sent - before.msgs_sent, after.send_failed - before.send_failed) == (1 + 20, 0)


def test_zmq_close_is_prompt_drops_held_messages_and_bye_bypasses_shaping(zmq_pair):
    a, b = zmq_pair
    failed_before = a.stats()[1].send_failed
    a.set_link(1, 8_000, 0.5)  # the payload would take 100 s
    a.send(1, "grad", 1, PAYLOAD)
    a.send(1, "grad", 2, PAYLOAD)
    time.sleep(0.05)
    start = time.monotonic()
    a.close()
    assert time.monotonic() - start < 0.5
    assert a.stats()[1].send_failed - failed_before == 2
    deadline = time.monotonic() + 1
    while 0 not in b.mailbox.departed and time.monotonic() < deadline:
        time.sleep(0.005)
    assert 0 in b.mailbox.departed
    assert b.mailbox.latest("grad", 0) is None


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
    a.set_link(1, 16 * MBIT, 0.02)
    took = send_and_time(a, b, 10)
    assert took == pytest.approx(expected_s(10, PAYLOAD_BYTES, 16 * MBIT, 0.02), rel=0.15)
    assert send_and_time(b, a, 10) < 0.05


def test_inproc_close_drops_held_messages_and_still_says_bye(inproc_pair):
    a, b = inproc_pair
    a.set_link(1, 8_000, 0.5)
    a.send(1, "grad", 1, PAYLOAD)
    start = time.monotonic()
    a.close()
    assert time.monotonic() - start < 0.1
    assert a.stats()[1].send_failed == 1
    assert 0 in b.mailbox.departed and b.mailbox.latest("grad", 0) is None
