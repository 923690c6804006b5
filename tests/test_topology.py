"""Topology: every kind's neighbours, in-neighbours that match them, shared random graphs, connectivity checks."""
import numpy as np
import pytest

from dlion.topology import KINDS, Topology, TopologySpec

IDS = (3, 7, 10, 42, 50)  # arbitrary ids: the graphs work on their sorted positions


def topo(kind, ids=IDS, **kw):
    return Topology(TopologySpec(kind, **kw), ids)


def by_position(t, round_):
    """The round's graph with ids replaced by positions, for comparison with the definitions."""
    pos = {p: i for i, p in enumerate(t.ids)}
    return {pos[p]: sorted(pos[q] for q in t.out_neighbours(p, round_)) for p in t.ids}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_static_kinds_follow_their_definitions(n):
    ids = [100 - 7 * i for i in range(n)]  # unsorted on purpose
    for r in (0, 5):
        assert by_position(topo("full", ids), r) == {p: [q for q in range(n) if q != p] for p in range(n)}
        assert by_position(topo("directed-ring", ids), r) == {p: sorted({(p + 1) % n} - {p}) for p in range(n)}
        assert by_position(topo("ring", ids), r) == {p: sorted({(p + 1) % n, (p - 1) % n} - {p}) for p in range(n)}
    if n > 1:
        offsets = [2 ** k for k in range(int(np.log2(n - 1)) + 1)]
        assert by_position(topo("exponential", ids), 0) == {p: sorted({(p + o) % n for o in offsets})
                                                              for p in range(n)}


def test_exponential_of_eight_and_of_five():
    assert by_position(topo("exponential", range(8)), 0)[0] == [1, 2, 4]
    assert by_position(topo("exponential", range(5)), 0)[0] == [1, 2, 4]
    assert by_position(topo("exponential", range(5)), 0)[3] == [0, 2, 4]


@pytest.mark.parametrize("n,period", [(2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4)])
def test_one_peer_exponential_rotates_through_the_powers_of_two(n, period):
    t = topo("one-peer-exponential", list(range(10, 10 + n)))
    assert t.period == period
    for r in range(2 * period + 1):
        assert by_position(t, r) == {p: [(p + 2 ** (r % period)) % n] for p in range(n)}


def test_edges_and_sequence():
    edges = ((3, 7), (7, 3), (10, 3), (3, 10))
    t = topo("edges", IDS[:3], edges=edges)
    assert t.out_neighbours(3, 0) == (7, 10) and t.out_neighbours(10, 9) == (3,)
    assert t.in_neighbours(3, 4) == (7, 10) and t.in_neighbours(7, 0) == (3,)
    seq = (((3, 7),), ((7, 10),), ((10, 3), (3, 7)))
    s = topo("sequence", IDS[:3], sequence=seq)
    assert s.period == 3
    assert [s.out_neighbours(3, r) for r in range(6)] == [(7,), (), (7,), (7,), (), (7,)]
    assert s.in_neighbours(3, 5) == (10,) and s.in_neighbours(10, 1) == (7,)


@pytest.mark.parametrize("n,k", [(2, 1), (4, 1), (6, 2), (8, 3), (5, 4)])
def test_random_k_out_is_the_same_on_every_peer_and_changes_each_round(n, k):
    ids = list(range(20, 20 + n))
    views = [Topology(TopologySpec("random-k-out", k=k, seed=11), order) for order in (ids, ids[::-1])]
    rounds = [views[0].graph(r) for r in range(30)]
    for r in range(30):  # another peer's view (built from the ids in another order), asked in another order
        assert views[1].graph(29 - r) == rounds[29 - r]
        for p, out in rounds[r].items():
            assert len(out) == k and p not in out and len(set(out)) == k
    if k < n - 1:  # otherwise every round is the full graph
        assert len({tuple(sorted(g.items())) for g in rounds}) > 1
        other_seed = Topology(TopologySpec("random-k-out", k=k, seed=12), ids)
        assert [other_seed.graph(r) for r in range(30)] != rounds
    assert views[0].period is None


SPECS = [TopologySpec("ring"), TopologySpec("directed-ring"), TopologySpec("exponential"), TopologySpec("full"),
         TopologySpec("edges", edges=((3, 7), (7, 10), (10, 3), (3, 42), (42, 50), (50, 3), (7, 3))),
         TopologySpec("one-peer-exponential"), TopologySpec("random-k-out", k=2, seed=5),
         TopologySpec("sequence", sequence=(((3, 7), (7, 10), (10, 42)), ((42, 50), (50, 3)), ()))]


def test_every_kind_is_covered():
    assert {s.kind for s in SPECS} == set(KINDS)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_in_neighbours_are_exactly_the_senders_of_the_round(spec):
    t = Topology(spec, IDS)
    for r in range(12):
        senders = {p: {src for src in t.ids if p in t.out_neighbours(src, r)} for p in t.ids}
        assert all(set(t.in_neighbours(p, r)) == senders[p] for p in t.ids)
        assert all(src not in t.out_neighbours(src, r) for src in t.ids)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_good_schedules_are_strongly_connected(spec):
    Topology(spec, IDS).check_strongly_connected()


@pytest.mark.parametrize("kind", ["ring", "directed-ring", "exponential", "full", "one-peer-exponential",
                                  "random-k-out"])
def test_a_single_peer_has_no_neighbours_and_is_connected(kind):
    t = topo(kind, [5])
    assert t.out_neighbours(5, 3) == () and t.in_neighbours(5, 3) == ()
    t.check_strongly_connected()


def test_a_schedule_that_is_not_strongly_connected_names_the_unreachable_peers():
    sink = Topology(TopologySpec("edges", edges=((0, 1), (1, 2), (2, 1))), [0, 1, 2])
    with pytest.raises(ValueError, match=r"peer 0 cannot be reached from peer\(s\) \[1, 2\]"):
        sink.check_strongly_connected()
    apart = Topology(TopologySpec("sequence", sequence=(((0, 1),), ((1, 0),))), [0, 1, 2])
    with pytest.raises(ValueError, match=r"period of 2 round\(s\): peer\(s\) \[2\] cannot be reached from peer 0; "
                                         r"peer 0 cannot be reached from peer\(s\) \[2\]"):
        apart.check_strongly_connected()
    # each round alone is disconnected, the union over the period is not: accepted
    Topology(TopologySpec("sequence", sequence=(((0, 1),), ((1, 2),), ((2, 0),))), [0, 1, 2]).check_strongly_connected()


@pytest.mark.parametrize("spec,ids,message", [
    (TopologySpec("star"), IDS, "unknown kind 'star'"),
    (TopologySpec("edges", edges=((3, 99),)), IDS, r"edge \[3, 99\] names 99, which is not a peer id"),
    (TopologySpec("edges", edges=((7, 7),)), IDS, r"edge \[7, 7\] is a self loop"),
    (TopologySpec("edges"), IDS, "expected at least one edge"),
    (TopologySpec("ring", edges=((3, 7),)), IDS, "edges are only for kind edges"),
    (TopologySpec("sequence"), IDS, "expected at least one edge list"),
    (TopologySpec("sequence", sequence=(((3, 7),), ((1, 3),))), IDS, r"sequence\[1\]\[0\]: edge \[1, 3\] names 1"),
    (TopologySpec("random-k-out", k=5), IDS, r"k: expected an integer in 1..4"),
    (TopologySpec("random-k-out", k=0), IDS, r"k: expected an integer in 1..4"),
    (TopologySpec("random-k-out", seed=-1), IDS, "seed: expected a non-negative integer"),
    (TopologySpec("full"), (1, 2, 1), "peer ids must be unique"),
    (TopologySpec("full"), (), "at least one peer"),
])
def test_invalid_specs_are_rejected_with_clear_messages(spec, ids, message):
    with pytest.raises(ValueError, match=message):
        Topology(spec, ids)


def test_unknown_peer_and_negative_round():
    t = topo("ring")
    with pytest.raises(ValueError, match="99 is not a peer id"):
        t.out_neighbours(99, 0)
    with pytest.raises(ValueError, match="rounds start at 0"):
        t.graph(-1)
