"""Model-plane gossip: push-sum and Sparse-Push reach the exact average on time-varying directed graphs, keep the
push-sum invariant through missed rounds and late messages, drop what they cannot use, and skew compensation
removes the disagreement that persistent local biases cause without moving the average."""
import time

import numpy as np
import pytest

from conftest import in_threads, stage_context
from dlion.gossip import KIND, STRATEGIES, NoGossip, PushSum, SkewCompensation, SparsePush
from dlion.stages import ModelAccess
from dlion.topology import Topology, TopologySpec
from dlion.transport import Sparse

DIM = 64
SPARSE = dict(gamma=0.25, fraction=0.25, refresh_every=None)  # k = 16 of 64 entries per link and round


def network(inproc, ids, spec, cls, **params):
    transports = inproc(ids)
    topology = Topology(spec, ids)
    return transports, {p: cls(cls.Params(**params), stage_context(transports, p, topology)) for p in ids}


def start_vectors(ids, seed=0):
    rng = np.random.default_rng(seed)
    return {p: rng.uniform(-1, 1, DIM).astype(np.float32) for p in ids}


def average(vectors):
    return np.mean([v.astype(np.float64) for v in vectors.values()], axis=0)


def gossip_only(gossips, starts, rounds, pause=None, first=0):
    """Every peer in its own thread, each round only gossiping; `pause(peer, round)` may delay or skip (returns
    True) a peer's round. Returns {peer: [GossipResult per round stepped]}."""
    def loop(p):
        z, results = starts[p], []
        for r in range(first, first + rounds):
            if pause is not None and pause(p, r):
                continue
            results.append(gossips[p].step(r, z))
            z = results[-1].params
        return results
    return in_threads(loop, list(gossips))


def delay(peer, round_, seconds, skip=False):
    """A `pause` that keeps `peer` busy for `seconds` before `round_` (and then skips that round if `skip`)."""
    def pause(p, r):
        if (p, r) != (peer, round_):
            return False
        time.sleep(seconds)
        return skip
    return pause


def until_back(transports, peer, round_):
    """A `pause` that holds the others' `round_` until `peer`'s first message re-admitted it, as a rejoin's
    announcement does: else they may run through every round before its thread sends anything, and its messages
    come too late to be used (their weight stays in flight until the link is reclaimed)."""
    def pause(p, r):
        deadline = time.monotonic() + 10
        while p != peer and r == round_ and peer in transports[p].mailbox.departed and time.monotonic() < deadline:
            time.sleep(0.005)
        return False
    return pause


def finals(results):
    return {p: rs[-1].params.astype(np.float64) for p, rs in results.items()}


KINDS = [TopologySpec("one-peer-exponential"), TopologySpec("random-k-out", k=1, seed=7)]


@pytest.mark.parametrize("spec", KINDS, ids=lambda s: s.kind)
@pytest.mark.parametrize("n", [4, 5, 6, 7, 8])
def test_push_sum_drives_every_peer_to_the_exact_average(inproc, spec, n):
    ids = list(range(10, 10 + n))
    transports, gossips = network(inproc, ids, spec, PushSum)
    starts = start_vectors(ids, n)
    results = gossip_only(gossips, starts, 80)
    for z in finals(results).values():
        np.testing.assert_allclose(z, average(starts), atol=1e-5)
    assert sum(g.w for g in gossips.values()) == pytest.approx(n, abs=1e-12)


@pytest.mark.parametrize("spec", KINDS, ids=lambda s: s.kind)
@pytest.mark.parametrize("n", [4, 5, 6, 7, 8])
def test_sparse_push_drives_every_peer_to_the_exact_average(inproc, spec, n):
    ids = list(range(10, 10 + n))
    transports, gossips = network(inproc, ids, spec, SparsePush, **SPARSE)
    starts = start_vectors(ids, n)
    results = gossip_only(gossips, starts, 300)
    for z in finals(results).values():
        np.testing.assert_allclose(z, average(starts), atol=1e-5)
    assert sum(g.w for g in gossips.values()) == pytest.approx(n, abs=1e-12)
    linked = set()
    for result in results[ids[0]]:  # each link's first message is dense, the others carry at most k entries
        for dst, entries in result.sent.items():
            assert entries == DIM if dst not in linked else entries <= 16
            linked.add(dst)


def test_sparse_push_conserves_numerator_mass_with_its_debts(inproc):
    ids = [0, 1, 2, 3, 4]
    transports, gossips = network(inproc, ids, TopologySpec("random-k-out", k=2, seed=3), SparsePush,
                                  gamma=0.5, fraction=0.05, refresh_every=None)
    starts = start_vectors(ids, 1)
    gossip_only(gossips, starts, 30)  # far from converged: the copies lag and the links owe a lot
    debts = sum(link.debt for g in gossips.values() for link in g._out.values())
    assert np.abs(debts).max() > 1e-3
    total = sum(v.astype(np.float64) for v in starts.values())
    np.testing.assert_allclose(sum(g.x for g in gossips.values()) + debts, total, atol=1e-9)


@pytest.mark.parametrize("fraction,dtype", [(0.25, "float16"), (0.5, "float32")], ids=["sparse link", "dense link"])
def test_a_links_first_dense_message_is_float16_where_sparse_ones_follow_and_the_copies_agree(inproc, fraction, dtype):
    ids = [0, 1]
    transports, gossips = network(inproc, ids, TopologySpec("full"), SparsePush, gamma=0.5, fraction=fraction,
                                  refresh_every=None)
    starts = start_vectors(ids, 2)
    in_threads(lambda p: gossips[p].step(0, starts[p]), ids)
    first = transports[1].mailbox.latest(KIND, 0).tensors["x"]
    assert not isinstance(first, Sparse) and first.dtype.name == dtype
    np.testing.assert_array_equal(gossips[1]._in[0].copy, gossips[0]._out[1].copy)  # both ends hold the same copy
    debts = sum(link.debt for g in gossips.values() for link in g._out.values())
    if dtype == "float16":  # the rounding is owed, not lost
        assert np.abs(debts).max() > 0
    total = sum(v.astype(np.float64) for v in starts.values())
    np.testing.assert_allclose(sum(g.x for g in gossips.values()) + debts, total, atol=1e-9)


def test_sparse_updates_go_in_half_precision_while_the_models_move_and_in_full_once_they_agree(inproc):
    ids = [0, 1, 2, 3]
    transports, gossips = network(inproc, ids, TopologySpec("one-peer-exponential"), SparsePush, **SPARSE)
    rng = np.random.default_rng(5)
    z = start_vectors(ids, 6)

    def received_dtypes():
        msgs = [transports[q].mailbox.latest(KIND, p) for p in ids for q in ids if p != q]
        return {(m.tensors["x"].values.dtype.name, m.tensors["owed"].dtype.name) for m in msgs
                if m is not None and isinstance(m.tensors["x"], Sparse)}

    for r in range(40):  # training-like: every peer's model drifts each round
        results = in_threads(lambda p: gossips[p].step(r, z[p] + rng.normal(0, 0.05, DIM).astype(np.float32)), ids)
        z = {p: results[p].params for p in ids}
    assert received_dtypes() == {("float16", "float16")}
    results = gossip_only(gossips, z, 300, first=40)  # no more drift: consensus, to the exact average
    assert {dtype for dtype, _ in received_dtypes()} == {"float32"}
    finals_ = finals(results)
    for p in ids:
        np.testing.assert_allclose(finals_[p], finals_[0], atol=1e-6)


def test_the_weight_travels_even_when_the_sparse_part_is_empty(inproc):
    ids = [0, 1, 2]
    spec = TopologySpec("edges", edges=((0, 1), (0, 2), (1, 0), (2, 0)))  # irregular: the weights move
    transports, gossips = network(inproc, ids, spec, SparsePush, gamma=0.5, fraction=0.1, refresh_every=None)
    same = np.linspace(-1, 1, DIM).astype(np.float16).astype(np.float32)  # exact in the first, float16, message
    results = gossip_only(gossips, {p: same for p in ids}, 6)
    weights, topology = {p: 1.0 for p in ids}, Topology(spec, ids)
    for r in range(6):
        pushed = {p: 0.5 * weights[p] / (len(topology.out_neighbours(p, r)) + 1) for p in ids}
        weights = {p: weights[p] - pushed[p] * len(topology.out_neighbours(p, r))
                   + sum(pushed[q] for q in topology.in_neighbours(p, r)) for p in ids}
        for p in ids:
            assert results[p][r].weight == pytest.approx(weights[p], abs=1e-12)
            assert results[p][r].received == len(topology.in_neighbours(p, r))
            if r > 0:  # every link's first message was dense; nothing differs since
                assert set(results[p][r].sent.values()) == {0}
            np.testing.assert_array_equal(results[p][r].params, same)
    assert weights[0] != pytest.approx(1.0)


@pytest.mark.parametrize("cls,params", [(PushSum, {}), (SparsePush, SPARSE)], ids=["push-sum", "sparse-push"])
def test_a_peer_that_skips_a_round_folds_it_in_later_and_nothing_is_lost(inproc, cls, params):
    ids = [0, 1, 2, 3, 4]
    spec = TopologySpec("one-peer-exponential")
    transports, gossips = network(inproc, ids, spec, cls, deadline_s=5.0, **params)
    topology = Topology(spec, ids)
    # the peer that expects peer 2's round-3 message waits only briefly for it, so that it is not late for its own
    # out-neighbours after the wait (which would be the late-message case below)
    waiting = topology.out_neighbours(2, 3)[0]
    gossips[waiting] = cls(cls.Params(deadline_s=0.3, **params), stage_context(transports, waiting, topology))
    starts = start_vectors(ids, 2)
    results = gossip_only(gossips, starts, 220, delay(2, 3, 0.1, skip=True))  # busy for a moment, then round 4
    assert results[waiting][3].received == 0 and results[waiting][3].wait_s >= 0.25
    # peer 2's step for round 4 also used what its round-3 in-neighbour had sent it
    assert results[2][3].received == 2
    assert sum(g.w for g in gossips.values()) == pytest.approx(5, abs=1e-12)  # conserved throughout
    for z in finals(results).values():
        np.testing.assert_allclose(z, average(starts), atol=1e-5)


@pytest.mark.parametrize("cls,params", [(PushSum, {}), (SparsePush, SPARSE)], ids=["push-sum", "sparse-push"])
def test_a_message_after_its_round_is_folded_in_with_the_next_round_and_nothing_is_lost(inproc, cls, params):
    ids = [0, 1, 2, 3, 4]
    transports, gossips = network(inproc, ids, TopologySpec("one-peer-exponential"), cls, deadline_s=0.3, **params)
    starts = start_vectors(ids, 3)

    # peer 2 falls behind its out-neighbours' deadlines early on, while the models still differ
    results = gossip_only(gossips, starts, 220, delay(2, 3, 0.5))
    late = [r.wait_s for r in results[gossips_after(2, 3, transports)][3:4]]
    assert late and late[0] >= 0.25  # its out-neighbour gave up waiting for it in round 3 ...
    assert sum(s.late for t in transports.values() for s in t.stats().values()) == 0  # ... and used it later
    assert sum(g.w for g in gossips.values()) == pytest.approx(5, abs=1e-12)  # weight conserved exactly
    zs = finals(results)
    for z in zs.values():  # consensus, near the average: the restored weight came valued at the senders' newer models
        np.testing.assert_allclose(z, zs[0], atol=1e-5)
    assert np.abs(zs[0] - average(starts)).max() < 0.2


def gossips_after(peer, round_, transports):
    """The out-neighbour of `peer` in `round_` on the one-peer exponential graph of the transports' peers."""
    return Topology(TopologySpec("one-peer-exponential"), list(transports)).out_neighbours(peer, round_)[0]


def test_a_late_message_costs_nothing_once_the_models_agree(inproc):
    ids = [0, 1, 2, 3]  # a power of two: one-peer exponential push-sum agrees exactly after two rounds
    transports, gossips = network(inproc, ids, TopologySpec("one-peer-exponential"), PushSum, deadline_s=0.3)
    starts = start_vectors(ids, 4)
    results = gossip_only(gossips, starts, 12, delay(1, 5, 0.5))
    assert results[gossips_after(1, 5, transports)][5].wait_s >= 0.25  # its message of round 5 came too late
    for z in finals(results).values():
        np.testing.assert_allclose(z, average(starts), atol=1e-6)


def test_a_dead_in_neighbour_costs_a_deadline_until_suspected_and_weight_pushed_to_it_comes_back(inproc):
    ids = [0, 1, 2]
    transports, gossips = network(inproc, ids, TopologySpec("full"), PushSum, deadline_s=0.3)
    live = {p: gossips[p] for p in (0, 1)}  # peer 2 never steps: dead, without a goodbye
    results = gossip_only(live, start_vectors(ids, 5), 5)
    waits = [r.wait_s for r in results[0]]
    assert all(w >= 0.25 for w in waits[:2]) and all(w < 0.2 for w in waits[2:])  # suspect_after = 2
    assert gossips[0].w + gossips[1].w < 0.5  # most of it pushed into peer 2, which never credited any
    transports[2].close()  # now it says goodbye: what was pushed to it comes back, and its share stays here
    results = gossip_only(live, {p: results[p][-1].params for p in (0, 1)}, 3, first=5)
    assert gossips[0].w + gossips[1].w == pytest.approx(2.0, abs=1e-12)
    assert results[0][-1].sent == {1: DIM}


@pytest.mark.parametrize("cls,params", [(PushSum, {}), (SparsePush, {**SPARSE, "gamma": 1.0})],
                         ids=["push-sum", "sparse-push"])
def test_a_peer_whose_weight_drained_moves_its_model_by_exactly_its_own_update(inproc, cls, params):
    """Peer 1 stops gossiping (restarted, frozen): peer 0 pushes into the link until it suspends it, and keeps a
    small weight. Its training, or a state it takes at a rejoin, must move its model by exactly that change: the
    update is not amplified by 1 / w."""
    ids = [0, 1]
    transports, gossips = network(inproc, ids, TopologySpec("full"), cls, deadline_s=0.05, suspend_after=3, **params)
    z = start_vectors(ids, 3)[0]
    for r in range(5):
        z = gossips[0].step(r, z).params
    assert gossips[0].w < 0.2
    for r, change in ((5, 0.01), (6, 2.0)):  # an optimizer's step, then a whole other model taken at a rejoin
        moved = z + np.float32(change)
        z = gossips[0].step(r, moved).params
        np.testing.assert_allclose(z, moved, rtol=1e-6)


@pytest.mark.parametrize("cls,params", [(PushSum, {}), (SparsePush, SPARSE)], ids=["push-sum", "sparse-push"])
@pytest.mark.parametrize("own_weight", [False, True], ids=["fresh-weight", "replica-weight"])
def test_the_weight_is_conserved_across_a_departure_and_a_rejoin(inproc, cls, params, own_weight):
    """Peer 2 leaves mid-run and a new process of it (fresh weight 1, newer epochs) rejoins the same graph. Nothing
    leaks or counts twice: the survivors keep exactly what peer 2 did not hold (what they had pushed to it comes
    back), and after the rejoin the three hold exactly that plus the new process's unit, and agree on one model; or,
    if the new process takes back the weight its replica recorded (`dlion.replica`: here, what it held when it
    left), exactly the number of peers again."""
    from dlion.transport import InprocTransport
    ids = [0, 1, 2]
    transports, gossips = network(inproc, ids, TopologySpec("full"), cls, deadline_s=0.3, **params)
    results = gossip_only(gossips, start_vectors(ids, 9), 4)
    assert sum(g.w for g in gossips.values()) == pytest.approx(3.0, abs=1e-12)
    departed_w = gossips[2].w
    transports[2].close()
    survivors = {p: gossips[p] for p in (0, 1)}
    results = gossip_only(survivors, {p: results[p][-1].params for p in (0, 1)}, 3, first=4)
    assert gossips[0].w + gossips[1].w == pytest.approx(3.0 - departed_w, abs=1e-12)
    restarted = InprocTransport(2, transports[0].hub, transports[0].limits)
    restarted.start()
    try:
        transports[2] = restarted
        gossips[2] = cls(cls.Params(deadline_s=0.3, **params), stage_context(transports, 2, Topology(
            TopologySpec("full"), ids)))
        if own_weight:
            gossips[2].take_weight(departed_w)
        starts = {**{p: results[p][-1].params for p in (0, 1)}, 2: start_vectors(ids, 10)[2]}
        results = gossip_only(gossips, starts, 30, first=7, pause=until_back(transports, 2, 7))
        total = 3.0 if own_weight else 3.0 - departed_w + 1.0
        assert sum(g.w for g in gossips.values()) == pytest.approx(total, abs=1e-12)
        zs = finals(results)
        for z in zs.values():
            np.testing.assert_allclose(z, zs[0], atol=1e-3)  # one model again
    finally:
        restarted.close()


def test_unusable_messages_are_dropped_and_counted(inproc):
    transports, gossips = network(inproc, [0, 1], TopologySpec("directed-ring"), SparsePush, deadline_s=0.2,
                                  gamma=1.0, fraction=0.1)
    sender, receiver = transports[1], gossips[0]
    good = np.ones(DIM, np.float32)
    messages = [
        ({"x": good}, {"e": 5, "n": 1, "w": 0.5}),                            # used: the link's first message
        ({"x": np.ones(DIM + 1, np.float32)}, {"e": 5, "n": 2, "w": 1.0}),    # wrong size
        ({"x": np.full(DIM, np.nan, np.float32)}, {"e": 5, "n": 2, "w": 1.0}),  # non-finite
        ({"x": good}, {"e": 5, "n": 2, "w": 0.4}),                            # weight sum went down
        ({"x": good}, {"e": 5, "n": 2, "w": 1.0e9}),                          # more weight than there is
        ({"x": good}, {"e": 5, "n": 1, "w": 0.9}),                            # a restart within the epoch
        ({"x": good}, {"e": 4, "n": 9, "w": 0.9}),                            # an older epoch
        ({"x": Sparse(np.array([5, 2], np.uint32), np.ones(2, np.float32), DIM),
          "owed": np.zeros(2, np.float32)}, {"e": 5, "n": 2, "w": 1.0}),      # unsorted indices
        ({"x": Sparse(np.array([2, 5], np.uint32), np.ones(2, np.float32), DIM)},
         {"e": 5, "n": 2, "w": 1.0}),                                         # no "owed"
        ({"x": good}, {"n": 2, "w": 1.0}),                                    # no epoch
        ({"x": Sparse(np.array([2, 5], np.uint32), np.full(2, 3, np.float32), DIM),
          "owed": np.zeros(2, np.float32)}, {"e": 5, "n": 2, "w": 1.0}),      # used: a sparse update of the copy
    ]
    received = []
    for r, (tensors, meta) in enumerate(messages):
        sender.send(0, KIND, r, tensors, meta)
        received.append(receiver.step(r, np.zeros(DIM, np.float32)).received)
    assert received == [1] + [0] * 9 + [1]
    assert transports[0].stats()[1].dropped == 9
    rejected = transports[0].rejections()["gossip"]
    assert rejected == {"shape": 3, "non-finite": 1, "weight": 2, "sequence": 1, "old epoch": 1, "meta": 1}
    # it halves its weight every round (gamma 1, one out-neighbour): 1/2 + 1/2 received in round 0, then 9 halvings,
    # then a half of that plus the 1/2 of the last message
    assert receiver.w == pytest.approx(2.0 ** -10 + 0.5, rel=1e-12)


def test_a_sparse_update_without_the_dense_first_message_is_dropped(inproc):
    transports, gossips = network(inproc, [0, 1], TopologySpec("directed-ring"), SparsePush, deadline_s=0.2)
    update = {"x": Sparse(np.array([1], np.uint32), np.ones(1, np.float32), DIM), "owed": np.zeros(1, np.float32)}
    transports[1].send(0, KIND, 0, update, {"e": 1, "n": 2, "w": 1.0})
    assert gossips[0].step(0, np.zeros(DIM, np.float32)).received == 0
    assert transports[0].stats()[1].dropped == 1


def test_rounds_must_increase_and_off_passes_the_parameters_through(inproc):
    transports, gossips = network(inproc, [0], TopologySpec("full"), PushSum)
    gossips[0].step(3, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="rounds must increase"):
        gossips[0].step(3, np.ones(4, np.float32))
    untouchable = ModelAccess(get=None, set=None, score=None)  # no gossip never reads or writes the model
    assert NoGossip(NoGossip.Params(), stage_context(transports, 0)).mix(0, untouchable).params is None
    assert set(STRATEGIES) == {"none", "push-sum", "sparse-push", "ad-psgd"}


# ---- skew compensation ----------------------------------------------------------------------------------------------

def ring_mixing(n):
    """Each peer keeps half and gives half to the next: column-stochastic (and here doubly stochastic)."""
    a = np.eye(n) * 0.5
    for i in range(n):
        a[(i + 1) % n, i] = 0.5
    return a


def test_skew_compensation_cancels_constant_biases_without_moving_the_average():
    n, d, rounds = 5, 3, 600
    mixing = ring_mixing(n)
    biases = np.random.default_rng(0).normal(0, 0.1, (n, d))
    biases -= biases.mean(axis=0)  # the peers' skews cancel out over the network, as label skew does
    runs = {}
    for on in (False, True):
        x = np.zeros((n, d))
        comps = [SkewCompensation(d, gain=0.05, leak=0.001) for _ in range(n)]
        means = []
        for _ in range(rounds):
            corrections = np.array([c.correction() for c in comps]) if on else np.zeros((n, d))
            assert np.abs(corrections.sum(axis=0)).max() < 1e-12  # the corrections sum to zero over the peers
            x = x + biases + corrections
            mixed = mixing @ x
            for c, flow in zip(comps, mixed - x):
                c.observe(flow)
            x = mixed
            means.append(x.mean(axis=0))
        runs[on] = (np.abs(x - x.mean(axis=0)).max(), np.array(means))
    assert runs[False][0] > 0.1  # gossip alone: a disagreement of the order of bias / mixing rate
    assert runs[True][0] < 0.05 * runs[False][0]  # leak / (gain + leak) of it is left
    np.testing.assert_allclose(runs[True][1], runs[False][1], atol=1e-12)  # the average never moved


@pytest.mark.parametrize("cls,params", [(PushSum, {}), (SparsePush, dict(gamma=0.25, fraction=0.1))],
                         ids=["push-sum", "sparse-push"])
def test_skew_compensation_through_gossip_brings_heterogeneous_peers_together(inproc, cls, params):
    """Each peer descends its own quadratic, centred on its own optimum (its skewed data); the network's optimum is
    their mean. Without compensation every peer settles between its own optimum and the mean."""
    ids = [0, 1, 2, 3]
    optima = {p: np.random.default_rng(10 + p).normal(0, 1, DIM) for p in ids}
    target = np.mean(list(optima.values()), axis=0)
    spread = {}
    for on in (False, True):
        transports, gossips = network(inproc, ids, TopologySpec("one-peer-exponential"), cls,
                                      skew_compensation="flow-integral" if on else "none",
                                      skew_gain=0.05, skew_leak=0.001, **params)

        def loop(p):
            z = np.zeros(DIM, np.float32)
            for r in range(400):
                z = (z - 0.1 * (z - optima[p])).astype(np.float32)  # the local step
                z = gossips[p].step(r, z).params
            return z

        spread[on] = max(np.abs(z - target).max() for z in in_threads(loop, ids).values())
    assert spread[True] < 0.2 * spread[False]


@pytest.mark.parametrize("cls,params", [(PushSum, {}), (SparsePush, SPARSE)], ids=["push-sum", "sparse-push"])
def test_with_staleness_no_one_waits_and_push_sum_mass_stays_exact(inproc, cls, params):
    ids = [0, 1, 2, 3, 4]
    transports, gossips = network(inproc, ids, TopologySpec("one-peer-exponential"), cls, deadline_s=2.0,
                                  staleness=2, **params)
    starts = start_vectors(ids, 6)
    rng = np.random.default_rng(6)
    jitter = {(p, r): rng.uniform(0, 0.004) for p in ids for r in range(150)}
    results = gossip_only(gossips, starts, 150, lambda p, r: time.sleep(jitter[p, r]))
    assert max(r.wait_s for rs in results.values() for r in rs) < 1.0  # nobody waited for a deadline
    # what is still in flight: every message a peer has not collected yet, folded in now
    for p, g in gossips.items():
        for msgs in transports[p].mailbox.collect(KIND, 10**6, [], time.monotonic()).values():
            for msg in msgs:
                assert g._receive(msg) == 1
    assert sum(g.w for g in gossips.values()) == pytest.approx(5, abs=1e-9)  # not one push-sum weight lost
    x_total = sum(g.x for g in gossips.values())
    debts = sum(link.debt for g in gossips.values() for link in g._out.values())
    np.testing.assert_allclose(x_total + debts, sum(starts[p].astype(np.float64) for p in ids), atol=1e-6)


def test_gossip_every_few_rounds_leaves_the_model_alone_in_between(inproc):
    transports, gossips = network(inproc, [0, 1], TopologySpec("full"), PushSum, every=3)
    models = {p: np.full(DIM, float(p), np.float32) for p in (0, 1)}

    def access(p):
        return ModelAccess(get=lambda: models[p].copy(), set=lambda x: models.__setitem__(p, x), score=None)

    def loop(p):
        return [gossips[p].mix(r, access(p)).params is not None for r in range(7)]

    assert in_threads(loop, [0, 1]) == {p: [True, False, False, True, False, False, True] for p in (0, 1)}
    np.testing.assert_allclose(models[0], 0.5) and np.testing.assert_allclose(models[1], 0.5)
