"""In-process transport: the shared Transport behaviour (validation, stats, barrier, bye) without sockets."""
import logging
import threading
import time

import numpy as np
import pytest

from conftest import in_threads
from dlion.emulate.links import ShapedLinks
from dlion.transport import InprocHub, InprocTransport, Sparse, WireLimits, encode
from dlion.transport.base import LATE_GRACE_S

LIMITS = WireLimits(known_senders=frozenset({0, 1, 2}), max_message_bytes=1 << 16)


@pytest.fixture
def hub():
    return InprocHub()


@pytest.fixture
def make(hub):
    made = []

    def make(peer_id, start=True):
        t = InprocTransport(peer_id, hub, LIMITS)
        made.append(t)
        if start:
            t.start()
        return t

    yield make
    for t in made:
        t.close()


def barrier_all(transports, timeout_s):
    """Run wait_for_peers on every transport at once; {peer_id: result}."""
    by_id = {t.peer_id: t for t in transports}
    return in_threads(lambda p: by_id[p].wait_for_peers(timeout_s), by_id)


def test_dense_and_sparse_roundtrip_copies_frames(make):
    a, b = make(0), make(1)
    g = np.arange(6, dtype=np.float32)
    a.send(1, "gossip", 2, {"owed": g, "x": Sparse(np.array([1], np.uint32), np.array([9.0], np.float32), 6)},
           {"e": 1, "n": 1, "w": 0.5})
    g[:] = -1  # the receiver holds its own copy, as over TCP
    got = b.mailbox.take("gossip", 2, [0], time.monotonic() + 1)[0]
    np.testing.assert_array_equal(got.tensors["owed"], np.arange(6, dtype=np.float32))
    assert got.tensors["x"].indices.tolist() == [1] and got.meta == {"e": 1, "n": 1, "w": 0.5}
    sent, received = a.stats()[1], b.stats()[0]
    assert sent.msgs_sent == received.msgs_received == 1
    assert sent.bytes_sent == received.bytes_received == got.nbytes


def test_barrier_with_a_late_starter(make):
    ts = [make(0), make(1), make(2, start=False)]
    threading.Timer(0.3, ts[2].start).start()
    t0 = time.monotonic()
    assert barrier_all(ts, 5) == {0: {1, 2}, 1: {0, 2}, 2: {0, 1}}
    assert time.monotonic() - t0 < 1.5


def test_barrier_timeout_marks_absent_peers_departed(make):
    a, b = make(0), make(1)
    t0 = time.monotonic()
    assert barrier_all([a, b], 0.3) == {0: {1}, 1: {0}}
    assert 0.3 <= time.monotonic() - t0 < 0.6
    assert a.mailbox.departed == {2}
    assert a.stats()[2].send_failed > 0


def test_a_peer_joining_after_the_barrier_is_answered(make):
    a, b = make(0), make(1)
    barrier_all([a, b], 0.2)
    c = make(2)
    assert c.wait_for_peers(2) == {0, 1}
    assert 2 in a.mailbox.departed, "a hello is no round: nobody waits for it yet"
    c.send(0, "probe", 1)
    assert 2 not in a.mailbox.departed, "its first round message re-admits it"


def test_a_restarted_peer_that_finds_the_run_in_progress_does_not_wait_for_a_missing_peer(make):
    a = make(0)
    barrier_all([a], 0.2)  # peers 1 and 2 never came: 0 trains on
    a.mailbox.advance(5)
    restarted = make(1)
    t0 = time.monotonic()
    assert restarted.wait_for_peers(30) == {0}
    assert time.monotonic() - t0 < LATE_GRACE_S + 1.0, "not the whole timeout for peer 2"
    assert restarted.mailbox.departed == {2}


def test_at_the_start_of_a_run_the_barrier_waits_for_a_late_peer(make):
    a, b = make(0), make(1)
    late = threading.Timer(LATE_GRACE_S + 0.5, lambda: make(2))
    late.start()
    try:
        assert barrier_all([a, b], 10) == {0: {1, 2}, 1: {0, 2}}
    finally:
        late.join()


def test_send_to_an_absent_or_closed_peer_counts_send_failed(make):
    a, b = make(0), make(1)
    a.send(2, "probe", 0)
    b.close()
    assert a.mailbox.departed == {1}, "close says bye"
    a.send(1, "probe", 0)
    b.close()  # idempotent
    b.send(0, "probe", 0)
    assert a.stats()[2].send_failed == 1 and a.stats()[1].send_failed == 1
    assert b.stats()[0].send_failed == 1 and b.stats()[0].msgs_sent == 1  # the bye


def test_send_misuse_raises(make):
    a = make(0)
    for dst in (0, 7):
        with pytest.raises(ValueError):
            a.send(dst, "probe", 0)
    with pytest.raises(ValueError, match="max_message_bytes"):
        a.send(1, "model", 0, {"x": np.zeros(1 << 15, np.float32)})


def test_invalid_spoofed_and_unknown_messages_are_dropped_and_counted(hub, make, caplog):
    a = make(0)
    spoofed = encode("probe", 2, 0)
    bad_sparse = encode("probe", 1, 0, {"s": Sparse(np.array([1], np.uint32), np.ones(1, np.float32), 4)})
    bad_sparse[1] = np.array([4], "<u2").tobytes()  # index 4 of 4, as a 16-bit gap
    with caplog.at_level(logging.WARNING, logger="dlion.transport"):
        hub.deliver(1, 0, spoofed)
        hub.deliver(1, 0, bad_sparse)
        hub.deliver(1, 0, [b"\xc1"])
        hub.deliver(99, 0, encode("probe", 1, 0))
    stats = a.stats()
    assert stats[1].dropped == 3 and stats[1].msgs_received == 3
    assert stats["unknown"].dropped == 1
    assert a.mailbox.latest("probe", 1) is None and a.mailbox.latest("probe", 2) is None
    reasons = " ".join(r.getMessage() for r in caplog.records)
    assert "header sender 2 != connection's peer 1" in reasons and "out of range" in reasons
    assert "key of 99 is no peer" in reasons
    assert a.rejections() == {"probe": {"sender mismatch": 1}, "?": {"malformed": 2, "unknown sender": 1}}


def test_drop_warnings_are_rate_limited(hub, make, caplog):
    make(0)
    with caplog.at_level(logging.WARNING, logger="dlion.transport"):
        for _ in range(250):
            hub.deliver(1, 0, [b"\xc1"])
    assert [r.getMessage().split("#")[1].split()[0] for r in caplog.records] == ["1", "2", "3", "4", "5",
                                                                                  "100", "200"]


def test_late_messages_are_counted_per_link(make):
    a, b = make(0), make(1)
    b.mailbox.take("probe", 3, [0], time.monotonic())
    a.send(1, "probe", 3)  # a straggler for the round just taken: late
    a.send(1, "probe", 4)
    assert b.stats()[0].late == 1
    assert b.stats()[0].msgs_received == 2


def test_peer_id_in_use_on_the_hub(make):
    make(0)
    with pytest.raises(ValueError, match="already"):
        make(0)


def test_messages_carry_their_send_and_arrival_times(make):
    a, b = make(0), make(1)
    before = time.time()
    a.send(1, "probe", 0)
    msg = b.mailbox.take("probe", 0, [0], time.monotonic() + 1)[0]
    assert before <= msg.sent_at <= msg.received_at <= time.time()


def test_each_peer_learns_its_outgoing_link_rate_from_the_receiver(make):
    """b measures the link a -> b from a's large messages and tells a in its next message (wall-clock stamps)."""
    a, b = make(0), make(1)
    a.link_policy = ShapedLinks()
    a.link_policy.set(1, bandwidth_bps=8e6)  # 1 MB/s: a 48 kB message takes 48 ms on the wire
    assert a.link_bandwidth(1) is None
    a.send(1, "ack", 0)  # small: gives b the link's base delay
    b.mailbox.take("ack", 0, [0], time.monotonic() + 1)
    for r in range(3):
        a.send(1, "probe", r, {"payload": np.zeros(12_000, np.float32)})
        b.mailbox.take("probe", r, [0], time.monotonic() + 2)
    assert b.inbound_bandwidth(0) == pytest.approx(8e6, rel=0.15)
    b.send(0, "ack", 1)
    a.mailbox.take("ack", 1, [1], time.monotonic() + 1)
    assert a.link_bandwidth(1) == b.inbound_bandwidth(0)
    assert a.bytes_by_kind()["probe"] > 3 * 48_000 and b.bytes_by_kind() == {"ack": b.stats()[0].bytes_sent}


def test_a_rounds_held_messages_leave_together_one_message_per_link(make):
    a, b, c = make(0), make(1), make(2)
    a.hold()
    a.send(1, "grad", 3, {"g": np.ones(4, np.float32)}, {"w": 2.0})
    a.send(1, "gossip", 3, {"x": np.ones(4, np.float32)}, {"n": 1, "w": 0.5, "e": 1})
    a.send(1, "eval", 3, None, {"acc": 0.5})
    a.send(2, "grad", 3, {"g": np.ones(4, np.float32)}, {"w": 2.0})
    a.send(1, "hello", 0, meta={"heard": "", "at": 0, "rate": 0.0})  # not a round's message: at once
    assert b.stats()[0].msgs_received == 1 and b.mailbox.latest("eval", 0) is None
    a.end_round()
    assert a.stats()[1].msgs_sent == 2 and a.stats()[1].bundles_sent == 1 and a.stats()[2].bundles_sent == 1
    assert b.stats()[0].msgs_received == 2 and b.stats()[0].dropped == 0
    got = b.mailbox.collect("grad", 3, [0], time.monotonic())
    assert got[0][0].meta == {"w": 2.0} and b.mailbox.latest("eval", 0).meta == {"acc": 0.5}
    assert b.mailbox.collect("gossip", 3, [0], time.monotonic())[0][0].meta["n"] == 1
    assert c.mailbox.collect("grad", 3, [0], time.monotonic())[0][0].tensors["g"].tolist() == [1, 1, 1, 1]
    assert a.bytes_by_kind()["grad"] > 0 and a.bytes_by_kind()["eval"] > 0  # counted per kind as before


def test_a_peer_about_to_wait_sends_what_it_holds_first(make):
    a, b = make(0), make(1)
    a.hold()

    def holder():  # sends its gradient (held), then waits for the answer
        a.send(1, "grad", 0, {"g": np.ones(4, np.float32)}, {"w": 1.0})
        return a.mailbox.collect("grad", 0, [1], time.monotonic() + 5.0)

    def answerer():  # answers only once it has the holder's gradient
        got = b.mailbox.collect("grad", 0, [0], time.monotonic() + 5.0)
        b.send(0, "grad", 0, {"g": np.ones(4, np.float32)}, {"w": 1.0})
        return got

    start = time.monotonic()
    got = in_threads(lambda p: (holder, answerer)[p](), [0, 1])
    assert time.monotonic() - start < 2.0 and got[0][1] and got[1][0]  # nobody waited for the deadline


def test_a_waiting_peer_keeps_holding_what_it_holds_for_a_peer_two_rounds_behind(make):
    a, b, c = make(0), make(1), make(2)
    b.send(0, "grad", 2, {"g": np.ones(4, np.float32)}, {"w": 1.0})  # b was last seen at round 2, c at round 5
    c.send(0, "grad", 5, {"g": np.ones(4, np.float32)}, {"w": 1.0})
    deadline = time.monotonic() + 2.0
    while a.mailbox.newest_rounds() != {1: 2, 2: 5}:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    a.hold()
    for dst in (1, 2):
        a.send(dst, "grad", 5, {"g": np.ones(4, np.float32)}, {"w": 1.0})
    a.mailbox.collect("grad", 5, [1], time.monotonic() + 0.3, staleness=2)  # waits for b's round 3: in vain
    # c may be waiting for round 5 (it is there): it got a's message before a waited; b waits for rounds up to 4 - s
    # of a's at most, all sent: its message stays held, to leave with the rest of the round
    assert c.stats()[0].msgs_received == 1 and b.stats()[0].msgs_received == 0
    a.send(1, "eval", 5, None, {"acc": 0.5})
    a.end_round()
    assert a.stats()[1].bundles_sent == 1 and b.stats()[0].msgs_received == 1
    assert b.mailbox.latest("eval", 0).meta == {"acc": 0.5}


def test_held_messages_beyond_the_size_limit_go_as_more_bundles_and_close_sends_them(make):
    a, b = make(0), make(1)
    a.hold()
    for r in range(3):  # 3 x 24 KB: two fit a bundle of the 64 KB limit, the third goes in a second one
        a.send(1, "grad", r, {"g": np.ones(6000, np.float32)}, {"w": 1.0})
    a.close()  # flushes before its bye
    assert a.stats()[1].bundles_sent == 2 and b.stats()[0].dropped == 0
    assert sorted(b.mailbox.collect("grad", 2, [0], time.monotonic())[0], key=lambda m: m.round)[2].round == 2
    assert 0 in b.mailbox.departed


def test_a_hello_claiming_a_far_future_round_moves_no_window(make):
    """A hello's round is read by a rejoining peer, which moves only on a state's answer: a forged one must not open
    the receiver's window nor spread in its own hellos."""
    a, b = make(0), make(1)
    a.send(1, "hello", 0, meta={"heard": "", "at": 1 << 62, "rate": 0.0})
    assert b.mailbox.latest("hello", 0).meta["at"] == 1 << 62 and b.mailbox.round == 0
    assert a.mailbox.latest("hello", 1).meta["at"] == 0  # b's answer: its own round
    a.send(1, "report", 10_000, None, {"rate": 5.0})
    assert b.mailbox.latest("report", 0) is None  # beyond the window, as before the hello
