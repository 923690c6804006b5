"""AD-PSGD: a request and its reply leave both ends on the pairwise average, the requester never waits, late replies
and crossed requests are folded in without losing the mean, partners are drawn reproducibly among the live
neighbours, bad messages change nothing, and peers that only gossip reach the mean they started from."""
import time

import numpy as np
import pytest

from conftest import stage_context
from dlion import messages
from dlion.gossip import AdPsgd
from dlion.transport import InprocHub, InprocTransport, WireLimits

DIM = 32
REQUEST, REPLY = messages.AVERAGE_REQUEST, messages.AVERAGE_REPLY


def gossips(transports, **params):
    return {p: AdPsgd(AdPsgd.Params(**params), stage_context(transports, p)) for p in transports}


def vectors(ids, seed=0):
    rng = np.random.default_rng(seed)
    return {p: rng.uniform(-1, 1, DIM).astype(np.float32) for p in ids}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Latency:
    """A link policy that holds every message back for `seconds`."""

    def __init__(self, seconds):
        self.seconds = seconds

    def release_at(self, dst, nbytes, handed_over):
        return handed_over + self.seconds


def test_a_request_and_its_reply_leave_both_peers_on_the_average(inproc):
    g = gossips(inproc([0, 1]))
    a, b = vectors([0, 1]).values()
    first = g[0].step(0, a)  # asks peer 1, the only other
    assert first.received == 0 and g[0].outstanding.target == 1
    served = g[1].step(0, b)  # replies with b, takes the average, asks peer 0
    average = (a + b) / 2
    np.testing.assert_allclose(served.params, average, atol=1e-7)
    folded = g[0].step(1, a)  # the reply (b), then peer 1's request (the average)
    np.testing.assert_allclose(folded.params, average, atol=1e-7)
    assert folded.received == 2 and g[0].outstanding.target == 1  # answered, so a new request went
    # peer 0's reply and its new request both carry the average: nothing moves any more
    np.testing.assert_allclose(g[1].step(1, served.params).params, average, atol=1e-7)


def test_the_requester_never_waits_and_keeps_one_request_in_flight(inproc):
    transports = inproc([0, 1, 2])
    g = gossips(transports)
    a = vectors([0])[0]
    began = time.monotonic()
    for r in range(20):  # nobody answers
        result = g[0].step(r, a)
        assert result.received == 0 and result.wait_s == 0.0
        np.testing.assert_array_equal(result.params, a)
    assert time.monotonic() - began < 0.5
    target = g[0].outstanding.target
    assert list(transports[target].mailbox.held(REQUEST, 0)) == [0]  # one request, of round 0
    assert not transports[3 - target].mailbox.held(REQUEST, 0)


def test_a_reply_rounds_later_is_folded_in_and_what_was_learned_meanwhile_is_kept(inproc):
    g = gossips(inproc([0, 1]))
    a, b = vectors([0, 1]).values()
    g[0].step(0, a)
    learned = np.full(DIM, 0.01, np.float32)
    for r in range(1, 6):  # peer 0 trains on, its request unanswered
        assert g[0].step(r, a + r * learned).received == 0
    b_after = g[1].step(0, b).params  # peer 1 at last serves the request of round 0
    result = g[0].step(6, a + 6 * learned)
    assert result.received == 2  # the reply, and peer 1's own request
    reply_folded = a + 6 * learned + (b - a) / 2  # the pairwise average, plus the steps since the request
    np.testing.assert_allclose(b_after, (a + b) / 2, atol=1e-7)
    # peer 1's request carried (a + b) / 2: peer 0 served it from `reply_folded`
    np.testing.assert_allclose(result.params, (reply_folded + (a + b) / 2) / 2, atol=1e-6)


def owed(g, transports, p):
    """What peer p will add when it folds in the reply already waiting for its request (zero if none is)."""
    mine = g[p].outstanding
    reply = None if mine is None else transports[p].mailbox.held(REPLY, mine.target).get(mine.round)
    return 0.0 if reply is None else g[p].params.mixing * (reply.tensors["x"] - mine.model)


def conserved_sum(g, transports, models):
    """The models' sum with the halves of exchanges still to be folded in: what pairwise averaging conserves."""
    return sum(models[p].astype(np.float64) + owed(g, transports, p) for p in models)


def test_exchanges_conserve_the_sum_of_the_models_whatever_happens_in_between(inproc):
    transports = inproc([0, 1])
    g = gossips(transports, mixing=0.3)
    z = vectors([0, 1])
    start = conserved_sum(g, transports, z)
    learned = np.full(DIM, 0.5, np.float32)
    z[0] = g[0].step(0, z[0]).params + learned  # it trains while its request is in flight
    for r in range(4):
        for p in (1, 0):
            z[p] = g[p].step(r + (p == 0), z[p]).params
            np.testing.assert_allclose(conserved_sum(g, transports, z), start + learned, atol=1e-5)


def delayed_pair(seconds):
    hub = InprocHub()
    limits = WireLimits(frozenset({0, 1}), 1 << 20)
    transports = {p: InprocTransport(p, hub, limits, link_policy=Latency(seconds)) for p in (0, 1)}
    for t in transports.values():
        t.start()
    return transports


def test_crossed_requests_answer_each_other_without_a_reply_or_a_wait():
    transports = delayed_pair(0.05)
    try:
        g = gossips(transports)
        a, b = vectors([0, 1]).values()
        g[0].step(0, a)  # both requests are on the wire at once
        g[1].step(0, b)
        time.sleep(0.2)
        results = {p: g[p].step(1, v) for p, v in ((0, a), (1, b))}
        for p in (0, 1):
            np.testing.assert_allclose(results[p].params, (a + b) / 2, atol=1e-7)
            assert results[p].received == 1 and not any(k == REPLY for k in transports[p].bytes_by_kind())
        time.sleep(0.2)
        assert not transports[0].mailbox.held(REPLY, 1) and transports[0].rejections() == {}
    finally:
        for t in transports.values():
            t.close()


def draws(transports, peer, rounds, seed):
    """The partners `peer` asks in `rounds` rounds when every request times out at once."""
    ctx = stage_context(transports, peer)
    clock = ctx.clock = FakeClock()
    gossip = AdPsgd(AdPsgd.Params(timeout_s=1.0, seed=seed), ctx)
    targets = []
    for r in range(rounds):
        gossip.step(r, np.zeros(DIM, np.float32))
        targets.append(gossip.outstanding.target)
        clock.now += 2.0
    assert gossip.forgotten == rounds - 1
    return targets


def test_partners_are_drawn_reproducibly_and_uniformly_among_the_neighbours(inproc):
    ids = [0, 1, 2, 3, 4]
    first = draws(inproc(ids), 2, 400, seed=5)
    assert first == draws(inproc(ids), 2, 400, seed=5)
    assert first != draws(inproc(ids), 2, 400, seed=6)
    counts = np.bincount(first, minlength=5)
    assert counts[2] == 0 and all(60 < counts[p] < 140 for p in (0, 1, 3, 4))


def test_malformed_models_are_rejected_counted_and_change_nothing(inproc):
    transports = inproc([0, 1])
    g = gossips(transports)
    a = vectors([0])[0]
    g[0].step(0, a)  # a request to peer 1 in flight
    transports[1].send(0, REQUEST, 7, {"x": np.ones(DIM + 1, np.float32)})
    transports[1].send(0, REQUEST, 8, {"x": np.ones(DIM, np.float64)})
    transports[1].send(0, REPLY, 0, {"x": np.ones((DIM, 1), np.float32)})
    result = g[0].step(1, a)
    np.testing.assert_array_equal(result.params, a)
    assert result.received == 0 and transports[0].rejections() == {REQUEST: {"shape": 2}, REPLY: {"shape": 1}}
    assert g[0].outstanding.round == 0, "a malformed reply answers nothing"
    transports[1].send(0, REPLY, 5, {"x": np.ones(DIM, np.float32)})  # answers no request of ours
    assert g[0].step(2, a).received == 0 and transports[0].rejections()[REPLY]["unexpected reply"] == 1


def test_a_departed_partner_frees_the_request_after_its_last_reply_is_folded_in(inproc):
    transports = inproc([0, 1, 2])
    g = gossips(transports)
    v = vectors([0, 1, 2])
    g[0].step(0, v[0])
    gone = g[0].outstanding.target
    stays = 3 - gone
    g[gone].step(0, v[gone])  # serves peer 0, and asks peer 0 or the other
    transports[gone].close()  # bye: the last message on its links
    assert gone in transports[0].mailbox.departed
    result = g[0].step(1, v[0])
    np.testing.assert_allclose(result.params, (v[0] + v[gone]) / 2, atol=1e-7)  # the reply; its request: not served
    assert result.received == 1 and g[0].forgotten == 0
    assert transports[0].rejections().get(REQUEST, {}) == ({"departed": 1} if g[gone].outstanding.target == 0 else {})
    assert g[0].outstanding.target == stays  # the reply answered the request; the next one goes to a live peer


def test_a_request_to_a_peer_that_departs_unanswered_is_forgotten(inproc):
    transports = inproc([0, 1, 2])
    g = gossips(transports)
    a = vectors([0])[0]
    g[0].step(0, a)
    gone = g[0].outstanding.target
    transports[gone].close()
    result = g[0].step(1, a)
    assert result.received == 0 and g[0].forgotten == 1 and g[0].outstanding.target == 3 - gone


def test_a_request_that_times_out_is_forgotten_so_a_new_one_can_go(inproc):
    transports = inproc([0, 1])
    ctx = stage_context(transports, 0)
    clock = ctx.clock = FakeClock()
    gossip = AdPsgd(AdPsgd.Params(timeout_s=10.0), ctx)
    a = vectors([0])[0]
    gossip.step(0, a)
    clock.now = 9.0
    gossip.step(1, a)
    assert gossip.outstanding.round == 0
    clock.now = 10.5
    gossip.step(2, a)
    assert gossip.outstanding.round == 2 and gossip.forgotten == 1
    assert sorted(transports[1].mailbox.held(REQUEST, 0)) == [0, 2]


@pytest.mark.parametrize("n", [3, 6])
def test_peers_that_only_gossip_reach_the_mean_they_started_from(inproc, n):
    ids = list(range(n))
    z = vectors(ids, seed=n)
    mean = np.mean([v.astype(np.float64) for v in z.values()], axis=0)
    order = np.random.default_rng(n)
    transports = inproc(ids)
    g = gossips(transports)
    for r in range(150):  # peers at their own pace: each round in another order, some skip it
        for p in order.permutation(ids):
            if order.random() < 0.7:
                z[p] = g[p].step(r, z[p]).params
        np.testing.assert_allclose(conserved_sum(g, transports, z) / n, mean, atol=1e-5)
    for v in z.values():
        np.testing.assert_allclose(v, mean, atol=1e-5)


def test_mixing_must_lie_strictly_between_zero_and_one():
    from dlion.schema import ConfigError, build
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="mixing"):
            build(AdPsgd.Params, {"mixing": bad}, "mixing")
    assert build(AdPsgd.Params, {}, "").timeout_s == 10.0


def test_a_finite_poison_model_is_rejected_by_the_norm_guard(inproc):
    transports = inproc([0, 1])
    g = gossips(transports)
    a = vectors([0])[0]
    transports[1].send(0, REQUEST, 0, {"x": np.full(DIM, 1e6, np.float32)})  # before peer 0 has sent anything
    result = g[0].step(0, a)
    np.testing.assert_array_equal(result.params, a)
    assert transports[0].rejections() == {REQUEST: {"norm": 1}}


def test_requests_far_ahead_of_a_slow_peer_are_filed(inproc):
    transports = inproc([0, 1])
    g = gossips(transports)
    a, b = vectors([0, 1]).values()
    g[0].step(100_000, a)  # a fast peer, far past the window of the slow one
    assert g[1].step(3, b).received == 1 and transports[1].rejections() == {}
    assert g[0].step(100_001, a).received == 2  # the reply (numbered by its request's round), and 1's request
