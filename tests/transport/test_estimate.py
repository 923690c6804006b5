"""The inbound-link bandwidth estimator on synthetic timelines (no sockets, no clocks)."""
import pytest

from dlion.transport.estimate import LinkEstimator

MB = 1_000_000


def link(bps: float, latency: float = 0.01, offset: float = 0.0):
    """Arrival time of a message on an idle-or-busy link: serialization after handover + latency, FIFO."""
    state = {"free": float("-inf")}

    def arrive(nbytes: int, sent_at: float) -> float:
        start = max(sent_at + latency, state["free"])
        state["free"] = start + nbytes * 8 / bps
        return state["free"] + offset  # the receiver's clock may be ahead of the sender's

    return arrive


def feed(est, arrive, messages):
    for nbytes, sent_at in messages:
        est.observe(nbytes, sent_at, arrive(nbytes, sent_at))


def test_no_rate_before_a_base_delay_and_a_large_message():
    est = LinkEstimator()
    est.observe(MB, 0.0, 1.0)
    assert est.bps is None
    est.observe(100, 2.0, 2.01)
    assert est.bps is None and est.base_delay == pytest.approx(0.01)


@pytest.mark.parametrize("offset", [0.0, 3.5, -2.0])
def test_rate_of_spaced_messages_whatever_the_clock_offset(offset):
    est, arrive = LinkEstimator(), link(50e6, latency=0.02, offset=offset)
    feed(est, arrive, [(200, 0.0)] + [(MB, 1.0 + i) for i in range(5)])
    assert est.bps == pytest.approx(50e6, rel=1e-3)  # the small message's own 32 us count as base delay


def test_a_backlog_is_not_a_slow_link():
    """A sender that hands over faster than the link carries: queueing delay must not lower the estimate."""
    est, arrive = LinkEstimator(), link(10e6)
    feed(est, arrive, [(200, 0.0)] + [(MB, 1.0 + 0.1 * i) for i in range(20)])  # 0.8 s each, sent every 0.1 s
    assert est.bps == pytest.approx(10e6, rel=1e-6)


def test_follows_a_step_change_within_a_few_messages():
    est = LinkEstimator(smoothing=0.5)
    fast, slow = link(100e6), link(10e6)
    feed(est, fast, [(200, 0.0)] + [(MB, 1.0 + i) for i in range(5)])
    feed(est, slow, [(MB, 10.0 + i) for i in range(3)])
    assert est.bps < 25e6  # down by 80% of the step after 3 messages
    feed(est, slow, [(MB, 20.0 + i) for i in range(5)])
    assert est.bps == pytest.approx(10e6, rel=0.05)  # 0.5^8 of the 90 Mbit/s step left: 0.35 Mbit/s


def test_base_delay_is_a_recent_minimum():
    """A latency that rises is learned once the old small-message delays leave the window."""
    est = LinkEstimator()
    for i in range(20):
        est.observe(100, float(i), i + 0.001)
    for i in range(20):
        est.observe(100, 100.0 + i, 100 + i + 0.05)
    assert est.base_delay == pytest.approx(0.05)


def test_bad_smoothing():
    with pytest.raises(ValueError):
        LinkEstimator(smoothing=0)
