"""Trust (issue 16), TF-free: CURVE admits only the configured keys and binds senders to them, a routing id cannot be
taken over (tests/transport/test_zmq.py), forged control is refused, finite poison is rejected by the norm guard and
the bounds, the mailbox cannot be crowded out, and push-sum weight comes back from a link that swallows everything.
The flood of hostile messages at live peers is tests/test_integration.py's."""
import threading
import time

import numpy as np
import pytest
import zmq

from conftest import curve_dealer, in_threads, stage_context
from dlion import config, security
from dlion.batching import WeightedBatching
from dlion.config import Evaluation, Training
from dlion.control import RunControl
from dlion.exchange import DenseExchange
from dlion.gossip import PushSum
from dlion.topology import Topology, TopologySpec
from dlion.transport import (InprocHub, InprocTransport, LinkStats, Mailbox, Message, WireLimits, ZmqTransport,
                             encode)
from dlion.transport.zmq import routing_id

DIM = 64


def transports_for(ids, global_batch=96, policies=None, **bounds):
    hub = InprocHub()
    limits = WireLimits(frozenset(ids), 1 << 22, max_batch_weight=float(global_batch))
    made = {p: InprocTransport(p, hub, limits, (policies or {}).get(p), **bounds) for p in ids}
    for t in made.values():
        t.start()
    return made


@pytest.fixture
def trio():
    made = transports_for([0, 1, 2])
    yield made
    for t in made.values():
        t.close()


# ---- authenticated links --------------------------------------------------------------------------------------------

@pytest.fixture
def keyed(tmp_path, ports):
    """Peers 0 and 1 on loopback with CURVE keys (peer 2 has a pair too, but no transport: the test plays it)."""
    keys_dir = tmp_path / "keys"
    security.generate(keys_dir, range(3))
    cfg = config.parse({"peers": [{"id": i, "port": p} for i, p in enumerate(ports(3))],
                        "training": {"dataset": "synthetic", "max_seconds": 1},
                        "security": {"keys_dir": str(keys_dir)}})
    endpoints = {p.id: ("127.0.0.1", p.port) for p in cfg.peers}
    keys = {p: security.load(cfg, p) for p in range(3)}
    made = [ZmqTransport(p, endpoints, WireLimits(frozenset(endpoints), 1 << 16), keys=keys[p]) for p in (0, 1)]
    for t in made:
        t.start()
    ctx = zmq.Context()
    yield made, keys, endpoints, ctx
    for t in made:
        t.close()
    ctx.destroy(linger=0)


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_curve_links_carry_traffic_between_configured_peers(keyed):
    (a, b), *_ = keyed
    assert in_threads(lambda t: t.wait_for_peers(1.0), [a, b]) == {a: {1}, b: {0}}  # peer 2 never starts
    b.send(0, "probe", 3, {"payload": np.ones(2, np.float32)})
    a.send(1, "probe", 4)
    assert a.mailbox.take("probe", 3, [1], time.monotonic() + 5)[1].tensors["payload"].tolist() == [1.0, 1.0]
    assert 0 in b.mailbox.take("probe", 4, [0], time.monotonic() + 5)


def test_an_unknown_key_gets_nothing_in(keyed):
    (a, _), keys, endpoints, ctx = keyed
    public, secret = zmq.curve_keypair()
    stranger = curve_dealer(ctx, routing_id(1, 1), public, secret, keys[0].peers[0], endpoints[0])
    for r in range(20):
        stranger.send_multipart(encode("probe", 1, r), zmq.NOBLOCK) if stranger.poll(0, zmq.POLLOUT) else None
    plain = ctx.socket(zmq.DEALER)  # no CURVE at all
    plain.setsockopt(zmq.IDENTITY, routing_id(1, 2))
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect("tcp://%s:%d" % endpoints[0])
    plain.send_multipart(encode("probe", 1, 99), zmq.NOBLOCK)
    wait_until(lambda: a.stats().get("unknown") is not None and a.stats()["unknown"].refused >= 1)
    time.sleep(0.3)
    assert a.mailbox.latest("probe", 1) is None
    assert sum(s.msgs_received for s in a.stats().values()) == 0


def test_a_key_speaks_only_as_its_own_peer(keyed):
    (a, _), keys, endpoints, ctx = keyed
    k2 = keys[2]
    as_peer_1 = curve_dealer(ctx, routing_id(1, 5), k2.public, k2.secret, k2.peers[0], endpoints[0])
    as_peer_1.send_multipart(encode("probe", 1, 7))  # peer 2's key, peer 1's routing id and header
    honest_id = curve_dealer(ctx, routing_id(2, 5), k2.public, k2.secret, k2.peers[0], endpoints[0])
    honest_id.send_multipart(encode("probe", 1, 8))  # its own routing id, but the header claims peer 1
    unknown = LinkStats()
    wait_until(lambda: a.stats().get("unknown", unknown).dropped >= 1 and a.stats()[2].dropped >= 1)
    assert a.mailbox.latest("probe", 1) is None
    assert a.rejections() == {"?": {"unknown sender": 1}, "probe": {"sender mismatch": 1}}
    honest_id.send_multipart(encode("probe", 2, 9))
    wait_until(lambda: a.mailbox.latest("probe", 2) is not None)


# ---- control --------------------------------------------------------------------------------------------------------

def control_of(transports, peer, target, evaluate, lag=0):
    return RunControl(Training(dataset="synthetic", max_seconds=60, target_accuracy=target),
                      Evaluation(every_iterations=20, deadline_s=0.3), stage_context(transports, peer), evaluate,
                      lambda *a, **k: None, threading.Event(), lag=lag)


def test_a_stop_must_agree_with_what_the_peer_has_seen(trio):
    control = control_of(trio, 0, 0.9, lambda: (0.3, 0.92))
    control.start()
    trio[1].send(0, "eval", 20, None, {"acc": 0.9})  # peer 2 never reports: peer 0 cannot decide by itself
    assert control.after(20) is None
    trio[2].send(0, "eval", 20, None, {"acc": 0.7})
    wait_until(lambda: 20 in trio[0].mailbox.held("eval", 2))
    assert control.after(21) is None  # the newest figures' mean is 0.84
    forged = [{"figures": "0:20:0.99,1:20:0.99,2:20:0.99"},   # disagrees with peer 0's own figure and the others'
              {"figures": "0:40:0.92,1:20:0.9,2:20:0.99"},    # a figure of a round peer 0 never evaluated
              {"figures": "1:20:0.9,2:20:0.7"},               # leaves out peer 0's own figure
              {"figures": "0:20:0.92,1:20:0.9,2:20:0.7"}]     # agrees, but the mean is below the target
    for meta in forged:
        trio[1].send(0, "stop", 21, None, meta)
        wait_until(lambda: trio[0].mailbox.latest("stop", 1).meta == meta)
        assert control.stop_reason(22) is None
    assert trio[0].rejections()["stop"] == {"stop evidence": 4}
    truth = {"figures": "0:20:0.92,1:20:0.9,2:40:0.95"}  # with peer 2's next figure, not here yet
    trio[1].send(0, "stop", 41, None, truth)  # (a fifth stop within a second is over the rate: from peer 2 then)
    trio[2].send(0, "stop", 41, None, truth)
    wait_until(lambda: trio[0].mailbox.latest("stop", 2) is not None)
    assert control.stop_reason(22) is None, "judged once peer 2's own figure came"
    trio[2].send(0, "eval", 40, None, {"acc": 0.95})
    wait_until(lambda: 40 in trio[0].mailbox.held("eval", 2))
    assert control.stop_reason(22) == "target"


def test_a_stop_naming_a_figure_that_never_comes_is_rejected_at_the_deadline(trio):
    control = control_of(trio, 0, 0.9, lambda: (0.3, 0.92))
    control.start()
    for p in (1, 2):
        trio[p].send(0, "eval", 20, None, {"acc": 0.8})
    wait_until(lambda: all(20 in trio[0].mailbox.held("eval", p) for p in (1, 2)))
    assert control.after(20) is None
    trio[1].send(0, "stop", 20, None, {"figures": "0:20:0.92,1:20:0.8,2:60:1.0"})  # peer 2 never scored round 60
    wait_until(lambda: trio[0].mailbox.latest("stop", 1) is not None)
    assert control.stop_reason(21) is None
    assert "stop" not in trio[0].rejections()
    time.sleep(0.35)  # the evaluation deadline
    assert control.stop_reason(21) is None
    assert trio[0].rejections()["stop"] == {"stop evidence": 1}


def test_a_forged_sender_or_a_flood_of_control_is_refused(trio):
    trio[1]._send_frames(0, encode("stop", 2, 20, None, {"figures": "0:1.0"}), 50)  # as peer 2, on peer 1's link
    for _ in range(20):
        trio[1].send(0, "bye", 0)
        trio[1].send(0, "fetch", 5)
    rejected = trio[0].rejections()
    assert rejected["stop"] == {"sender mismatch": 1}
    assert rejected["bye"]["rate"] >= 17 and rejected["fetch"]["rate"] >= 14
    for kind, meta in [("eval", {"acc": 2.0}), ("eval", {"acc": True}), ("score", {"loss": -1.0}),
                       ("report", {"rate": -1.0})]:
        trio[1].send(0, kind, 7, None, meta)
    assert trio[0].mailbox.latest("eval", 1) is None and trio[0].mailbox.latest("score", 1) is None


def test_an_absurd_rate_cannot_take_the_batch(trio):
    stages = {p: WeightedBatching(WeightedBatching.Params(retune_every=1), stage_context(trio, p, global_batch=96))
              for p in trio}
    for p in (0, 2):
        stages[p].observe(0, 32, 32 / 300.0)
    trio[1].send(0, "report", 0, None, {"rate": 1e30})
    stages[0].batch_size(1)
    sizes = stages[0].sizes  # peer 1's claim counts as 16 times the median rate at most
    assert sizes[1] <= 96 * 16 / 18 + 1 and sizes[0] >= 3 and sizes[2] >= 3


# ---- finite poison --------------------------------------------------------------------------------------------------

def test_a_finite_poison_gradient_is_rejected(trio):
    exchanges = {p: DenseExchange(DenseExchange.Params(deadline_s=1.0), stage_context(trio, p)) for p in (0, 1)}
    rng = np.random.default_rng(0)
    grads = {p: rng.normal(0, 0.01, DIM).astype(np.float32) for p in (0, 1)}
    in_threads(lambda p: exchanges[p].exchange(0, grads[p], 32), (0, 1))  # peer 0 learns its own scale
    trio[2].send(0, "grad", 1, {"g": np.full(DIM, 1e10, np.float32)}, {"w": 1.0})
    trio[2].send(0, "grad", 2, {"g": grads[1]}, {"w": 1e30})
    results = in_threads(lambda p: exchanges[p].exchange(1, grads[p], 32), (0, 1))
    assert np.abs(results[0].grads).max() < 1.0
    assert trio[0].rejections()["grad"] == {"norm": 1, "batch weight": 1}


def test_a_finite_poison_model_is_rejected(trio):
    topology = Topology(TopologySpec("full"), [0, 1, 2])
    gossips = {p: PushSum(PushSum.Params(deadline_s=0.3), stage_context(trio, p, topology)) for p in (0, 1)}
    z = {p: np.random.default_rng(p).normal(0, 0.1, DIM).astype(np.float32) for p in (0, 1)}
    in_threads(lambda p: gossips[p].step(0, z[p]), (0, 1))  # peer 2 stays silent; its id is the attacker's
    trio[2].send(0, "gossip", 1, {"x": np.full(DIM, 1e10, np.float32)}, {"e": 1 << 62, "n": 1, "w": 0.3})
    results = in_threads(lambda p: gossips[p].step(1, z[p]), (0, 1))
    assert np.abs(results[0].params).max() < 1.0
    assert trio[0].rejections() == {"gossip": {"norm": 1}}


# ---- mailbox --------------------------------------------------------------------------------------------------------

def message(kind, sender, round_, nbytes=100):
    return Message(kind, sender, round_, {}, {}, nbytes)


def test_far_future_rounds_and_a_sender_over_its_memory_bound_crowd_nothing_out():
    mb = Mailbox(window=64, max_held_bytes=1000)
    assert mb.put(message("grad", 1, 0)) is None
    assert mb.put(message("grad", 1, 65)) == "beyond window"
    assert mb.put(message("grad", 2, 1, nbytes=950)) is None
    assert mb.put(message("grad", 2, 2, nbytes=100)) == "sender memory"
    for r in range(1, 10):  # the other sender's messages still go in, and nothing held was evicted
        assert mb.put(message("grad", 1, r)) is None
    got = mb.collect("grad", 9, [1, 2], time.monotonic())
    assert [m.round for m in got[1]] == list(range(10)) and [m.round for m in got[2]] == [1]
    assert mb.put(message("grad", 2, 3, nbytes=900)) is None, "collected messages free their sender's bound"
    mb.collect("grad", 40, [1], time.monotonic())
    assert mb.put(message("grad", 1, 104)) is None, "the window moves with the rounds the stages ask for"


def test_a_second_message_for_a_collected_round_is_refused_not_swapped_in():
    mb = Mailbox()
    first = message("gossip", 1, 3)
    assert mb.put(first) is None and mb.put(message("gossip", 1, 3)) == "duplicate"
    assert mb.collect("gossip", 3, [1], time.monotonic())[1] == [first]
    assert mb.put(message("report", 1, 3)) is None and mb.put(message("report", 1, 3)) is None


def test_a_refused_message_is_no_sign_of_life():
    mb = Mailbox(window=8)
    mb.mark_departed(1)
    assert mb.put(message("grad", 1, 100)) == "beyond window"
    assert 1 in mb.departed
    assert mb.put(message("report", 1, 0)) is None  # filed (a hello would be, too, but it re-admits nobody)
    assert 1 not in mb.departed


# ---- push-sum weight through a dead link ----------------------------------------------------------------------------

class BlackHole:
    """A link policy that holds every message to `dst` forever: sends succeed, nothing arrives, nothing disconnects."""

    def __init__(self, dst):
        self.dst = dst

    def release_at(self, dst, nbytes, handed_over):
        return handed_over + 1e9 if dst == self.dst else None


def test_push_sum_weight_comes_back_from_a_link_that_swallows_everything():
    ids = [0, 1, 2, 3]
    transports = transports_for(ids, policies={0: BlackHole(1)})
    try:
        topology = Topology(TopologySpec("one-peer-exponential"), ids)
        gossips = {p: PushSum(PushSum.Params(deadline_s=0.2, staleness=4, suspend_after=8, reclaim_after_s=0.5),
                              stage_context(transports, p, topology)) for p in ids}
        starts = {p: np.random.default_rng(p).uniform(-1, 1, DIM).astype(np.float32) for p in ids}
        lowest = {}

        def loop(p):
            z = starts[p]
            for r in range(150):
                z = gossips[p].step(r, z).params
                lowest[p] = min(lowest.get(p, 1.0), gossips[p].w)
                time.sleep(0.01)  # 1.5 s in all: the dead link is given up (reclaim_after_s) at least once
            return z

        finals = in_threads(loop, ids)
        assert gossips[0].reclaimed > 0
        assert lowest[0] > 1e-3, "without suspension it would halve on every push into the dead link"
        for z in finals.values():
            assert np.isfinite(z).all() and np.abs(z).max() <= 1.0
        # every unit of weight is with a peer or in flight on a link of the current epoch
        in_flight = 0.0
        for p, g in gossips.items():
            for dst, link in g._out.items():
                used = gossips[dst]._in.get(p)
                in_flight += link.weight - (used.weight if used is not None and used.epoch == link.epoch else 0.0)
        assert sum(g.w for g in gossips.values()) + in_flight == pytest.approx(len(ids), abs=1e-9)
    finally:
        for t in transports.values():
            t.close()


def test_with_local_steps_the_evaluation_interval_and_max_iterations_count_optimizer_steps(trio):
    control = RunControl(Training(dataset="synthetic", max_iterations=100), Evaluation(every_iterations=50),
                         stage_context(trio, 0), lambda: (0.3, 0.5), lambda *a, **k: None, threading.Event(),
                         steps_per_round=4)
    assert control.every == 12  # rounds of 4 steps between evaluations
    assert control.stop_reason(24) is None and control.stop_reason(25) == "max_iterations"
    assert RunControl(Training(dataset="synthetic", max_iterations=100), Evaluation(every_iterations=2),
                      stage_context(trio, 0), lambda: (0.3, 0.5), lambda *a, **k: None, threading.Event(),
                      steps_per_round=8).every == 1


def test_with_overlapped_rounds_a_peer_goes_on_and_stops_on_the_peers_newest_figures(trio):
    control = control_of(trio, 0, 0.9, lambda: (0.3, 0.92), lag=8)
    control.start()
    assert control.after(20) is None  # evaluates, shares its figure, goes on: no figure of the others yet
    assert control.eval_s < 0.3  # it did not wait out the deadline for them
    trio[1].send(0, "eval", 20, None, {"acc": 0.86})
    wait_until(lambda: 20 in trio[0].mailbox.held("eval", 1))
    assert control.after(21) is None  # nothing from peer 2 yet
    trio[2].send(0, "eval", 20, None, {"acc": 0.8})
    wait_until(lambda: 20 in trio[0].mailbox.held("eval", 2))
    assert control.after(22) is None  # round 20's mean is 0.86
    trio[2].send(0, "eval", 40, None, {"acc": 0.99})  # a faster peer's newer figure counts before peer 0 gets there
    wait_until(lambda: 40 in trio[0].mailbox.held("eval", 2))
    assert control.after(23) == "target"
    for p in (1, 2):
        wait_until(lambda: trio[p].mailbox.latest("stop", 0) is not None)
        assert trio[p].mailbox.latest("stop", 0).meta["figures"] == "0:20:0.92,1:20:0.86,2:40:0.99"
        assert trio[p].mailbox.latest("stop", 0).round == 20  # its oldest figure's: within every receiver's window


def test_a_stop_reaches_a_peer_far_behind(trio):
    """Peer 0 trains alone far ahead (round 1000); the others' newest figures are of round 20: its stop is numbered
    by its oldest figure, within the window of a peer still at round 20 (numbered 1000, it was refused)."""
    control = control_of(trio, 0, 0.9, lambda: (0.3, 0.92), lag=None)
    control.start()
    for p in (1, 2):
        trio[p].send(0, "eval", 20, None, {"acc": 0.9})
    wait_until(lambda: all(20 in trio[0].mailbox.held("eval", p) for p in (1, 2)))
    assert control.after(1000) == "target"
    for p in (1, 2):
        wait_until(lambda: trio[p].mailbox.latest("stop", 0) is not None)
        assert "stop" not in trio[p].rejections()


def test_a_round_below_the_target_is_judged_once_and_a_later_one_can_still_stop(trio):
    accuracies = iter([0.5, 0.95])
    control = control_of(trio, 0, 0.9, lambda: (0.3, next(accuracies)), lag=8)
    control.start()
    for p in (1, 2):
        trio[p].send(0, "eval", 20, None, {"acc": 0.5})
        trio[p].send(0, "eval", 40, None, {"acc": 0.95})
    wait_until(lambda: all(40 in trio[0].mailbox.held("eval", p) for p in (1, 2)))
    assert control.after(20) is None and control.after(21) is None
    assert control.after(40) == "target"


def test_in_lockstep_a_peer_waits_for_the_figures_of_its_evaluation_round(trio):
    control = control_of(trio, 0, 0.9, lambda: (0.3, 0.92), lag=0)
    control.start()
    late = threading.Timer(0.1, lambda: [trio[p].send(0, "eval", 20, None, {"acc": 0.9}) for p in (1, 2)])
    late.start()
    assert control.after(20) == "target"  # the figures that came while it waited count at once
    late.join()


def test_a_peer_that_trains_alone_never_waits_for_figures(trio):
    control = control_of(trio, 0, 0.9, lambda: (0.3, 0.92), lag=None)
    control.start()
    assert control.after(20) is None and control.after(40) is None
    assert control.eval_s < 0.3
