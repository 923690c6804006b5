"""Replicas of a peer's state at its successors, across in-process peers with stand-in trainers (no TF): a replica
round trip restores the state, a lost difference leaves a stale slice and never a wrong replica, hostile slices are
dropped, and a restarted peer takes the freshest state and its own push-sum weight back."""
import time
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import stage_context
from dlion import messages
from dlion.rejoin import Rejoin
from dlion.replica import Replicas, holders, slice_of
from test_rejoin import Log, Trainer, answering, looping

PEERS = (0, 1, 2)


@dataclass(frozen=True)
class Settings:
    copies: int = 1
    chunks: int = 4
    refresh_every: int = 8
    optimizer: bool = True


def network(inproc, trainers, **settings):
    transports = inproc(tuple(trainers))
    replicas = {p: Replicas(Settings(**settings), stage_context(transports, p), trainers[p]) for p in trainers}
    return transports, replicas


def state_of(trainer):
    return np.concatenate([trainer.params, trainer.optimizer])


def train(trainer, rng):
    """A round's change: small everywhere (float16 differences), as an optimizer's."""
    trainer.params += rng.normal(0, 1e-3, trainer.params.size).astype(np.float32)
    trainer.optimizer += rng.normal(0, 1e-4, trainer.optimizer.size).astype(np.float32)


def rounds(replicas, trainers, first, count, weight=0.75, rng=None):
    for r in range(first, first + count):
        if rng is not None:
            train(trainers[0], rng)
        for p, rep in replicas.items():
            rep.step(r, weight if p == 0 else 1.0)
        time.sleep(0.002)
    for rep in replicas.values():
        rep.receive(first + count)


def ask(transports, replicas, round_=0):
    """Peer 0 asks what replica of its state the others hold, and for the one its holder, peer 1, offers; returns
    that (None: nothing offered)."""
    replicas[0].ask(round_)
    time.sleep(0.02)
    for p in (1, 2):
        replicas[p].answer(round_)
    time.sleep(0.02)
    offer = transports[0].mailbox.latest(messages.REPLICA_OFFER, 1)
    assert transports[0].mailbox.latest(messages.REPLICA_OFFER, 2) is None  # one copy, at the successor
    if offer is None or offer.round != round_:
        return None
    replicas[0].fetch(1, round_)
    time.sleep(0.02)
    replicas[1].answer(round_)
    time.sleep(0.02)
    answer = transports[0].mailbox.latest(messages.REPLICA_STATE, 1)
    assert answer.round == round_ and answer.meta == offer.meta
    return answer


def test_replicas_go_to_the_next_live_peers_in_id_order():
    assert holders(3, (0, 1, 3, 7), 2) == [7, 0]
    assert holders(7, (0, 1, 3, 7), 1, departed={0}) == [1]
    assert holders(0, (0,), 2) == []
    parts = [slice_of(10, 4, i) for i in range(4)]
    assert [(s.start, s.stop) for s in parts] == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_a_replica_round_trip_restores_the_state_exactly(inproc):
    trainers = {p: Trainer(float(p + 1), size=101) for p in PEERS}
    transports, replicas = network(inproc, trainers, refresh_every=1)  # every slice dense: exact
    rng = np.random.default_rng(0)
    rounds(replicas, trainers, 0, 3, rng=rng)
    assert ask(transports, replicas) is None  # 3 of 4 slices: not complete, nothing offered
    rounds(replicas, trainers, 3, 4)  # a whole pass since the state last changed
    answer = ask(transports, replicas, 1)
    assert answer.round == 1 and answer.meta == {"at": 3, "w": 0.75}  # its oldest slice: round 3
    np.testing.assert_array_equal(np.concatenate([answer.tensors["p"], answer.tensors["o"]]), state_of(trainers[0]))


def test_differences_in_half_precision_track_the_state_and_cost_half(inproc):
    trainers = {p: Trainer(float(p + 1), size=4000) for p in PEERS}
    transports, replicas = network(inproc, trainers)
    rng = np.random.default_rng(1)
    rounds(replicas, trainers, 0, 4 * 4, rng=rng)  # four passes while training: one dense, then differences
    rounds(replicas, trainers, 16, 4)  # and one since the state last changed
    answer = ask(transports, replicas, 20)
    restored = np.concatenate([answer.tensors["p"], answer.tensors["o"]])
    np.testing.assert_allclose(restored, state_of(trainers[0]), atol=2e-6)  # float16 of the last differences
    sizes = transports[0].bytes_by_kind()["replica"]
    assert sizes < 0.62 * 5 * state_of(trainers[0]).nbytes  # one dense pass and four of float16: 0.6 of float32


def test_a_lost_difference_leaves_its_slice_stale_until_the_next_dense_one_never_wrong(inproc):
    trainers = {p: Trainer(float(p + 1), size=100) for p in PEERS}
    transports, replicas = network(inproc, trainers, refresh_every=4)
    rng = np.random.default_rng(2)
    rounds(replicas, trainers, 0, 4, rng=rng)  # the dense pass
    send, lost = transports[0].send, []

    def lossy(dst, kind, round_, *args, **kwargs):
        if kind == messages.REPLICA and round_ == 5 and not lost:
            lost.append(round_)  # slice 1's first difference never arrives
            return
        send(dst, kind, round_, *args, **kwargs)

    transports[0].send = lossy
    rounds(replicas, trainers, 4, 4, rng=rng)
    assert lost and ask(transports, replicas, 8).meta["at"] == 1  # slice 1 is still round 1's: stale, not wrong
    rounds(replicas, trainers, 8, 4, rng=rng)  # slice 1's next difference is against the base the holder lacks
    assert ask(transports, replicas, 12) is None  # so it is invalid: no replica is offered
    rounds(replicas, trainers, 12, 8, rng=rng)  # its fourth pass (round 17) is dense again: repaired
    rounds(replicas, trainers, 20, 4)
    time.sleep(1.0)  # requests are rate-limited: a third within a second would be dropped
    answer = ask(transports, replicas, 24)
    np.testing.assert_allclose(np.concatenate([answer.tensors["p"], answer.tensors["o"]]), state_of(trainers[0]),
                               atol=2e-6)


def test_hostile_slices_are_dropped_and_counted(inproc):
    trainers = {p: Trainer(float(p + 1), size=100) for p in PEERS}
    transports, replicas = network(inproc, trainers)
    rounds(replicas, trainers, 0, 4)
    size = state_of(trainers[0]).size
    meta = {"e": 10 ** 18, "n": 1, "base": 0, "i": 0, "of": 4, "p": 100, "w": 1.0}
    part = slice_of(size, 4, 0)
    bad = [({**meta, "size": size + 1}, np.zeros(part.stop, np.float32)),  # not our state's size
           ({**meta, "size": size, "i": 9}, np.zeros(part.stop, np.float32)),  # no such slice
           ({**meta, "size": size, "of": 10 ** 15}, np.zeros(part.stop, np.float32)),  # more slices than entries
           ({**meta, "size": size}, np.zeros(part.stop - 1, np.float32)),  # the wrong length
           ({**meta, "size": size}, np.zeros(part.stop, np.float16)),  # dense but in half precision
           ({**meta, "size": size, "e": 1}, np.zeros(part.stop, np.float32))]  # an older epoch than the link's
    for r, (m, values) in enumerate(bad):
        transports[0].send(1, messages.REPLICA, 100 + r, {"d": values}, m)
    replicas[1].receive(200)
    assert sum(transports[1].rejections()["replica"].values()) == len(bad)
    answer = ask(transports, replicas, 200)
    np.testing.assert_array_equal(np.concatenate([answer.tensors["p"], answer.tensors["o"]]), state_of(trainers[0]))


def others_at(transports, round_):
    """Peers 1 and 2 have trained up to `round_`, and everyone's hellos say so."""
    for p in (1, 2):
        transports[p].mailbox.advance(round_)
    for t in transports.values():
        t.wait_for_peers(5)


def restarted(transports, trainers, replicas, weights, **kwargs):
    """A new process of peer 0 (fresh state), its rejoin asking the others."""
    trainers[0] = Trainer(9.0, size=trainers[1].params.size)
    replicas[0] = Replicas(Settings(), stage_context(transports, 0), trainers[0])
    log = Log()
    rejoin = Rejoin(stage_context(transports, 0), trainers[0], log, 2, replicas=replicas[0],
                    take_weight=weights.append, **kwargs)
    return rejoin, log


@pytest.mark.parametrize("source_round,expect", [(4, "replica"), (40, "source")])
def test_a_restarted_peer_takes_the_freshest_state_and_its_replicas_weight_in_any_case(inproc, source_round, expect):
    trainers = {p: Trainer(float(p + 1), size=100) for p in PEERS}
    transports, replicas = network(inproc, trainers)
    rounds(replicas, trainers, 0, 8, weight=0.6)  # a replica of rounds 4..7 at peer 1
    mine = state_of(trainers[0])
    others_at(transports, source_round)
    weights = []
    rejoin, log = restarted(transports, trainers, replicas, weights)
    # peers 1 and 2 at their rounds: answering rejoin requests and replica requests
    with looping(lambda: [replicas[p].answer(source_round) for p in (1, 2)]), \
            answering({p: Rejoin(stage_context(transports, p), trainers[p], Log(), 2, elapsed=lambda: 50.0)
                       for p in (1, 2)}, {1: source_round, 2: source_round}):
        at = rejoin.start(0)
    _, event = log.events[0]
    assert event["taken"] and event["from"] == expect and weights == [0.6] and event["weight"] == 0.6, event
    if expect == "replica":  # its oldest slice is of round 4, as recent as the source's state
        np.testing.assert_array_equal(state_of(trainers[0]), mine)
    else:
        np.testing.assert_array_equal(trainers[0].params, trainers[event["from_peer"]].params)
    assert at > source_round


def test_an_implausible_offer_is_not_believed(inproc):
    """A holder that offers a replica newer than any round the others are at, or a weight beyond the number of
    peers, is not asked for it: the restarted peer takes the source's state and keeps its own weight."""
    trainers = {p: Trainer(float(p + 1), size=100) for p in PEERS}
    transports, replicas = network(inproc, trainers)
    others_at(transports, 40)
    weights = []
    rejoin, log = restarted(transports, trainers, replicas, weights)

    def lie():  # peer 1 offers from round 10**9, peer 2 a weight of 50 peers
        for p, meta in ((1, {"at": 10 ** 9, "w": 1.0}), (2, {"at": 30, "w": 50.0})):
            asked = transports[p].mailbox.latest(messages.REPLICA_REQUEST, 0)
            if asked is not None:
                transports[p].send(0, messages.REPLICA_OFFER, asked.round, None, meta)

    with looping(lie, pause=0.2), answering({p: Rejoin(stage_context(transports, p), trainers[p], Log(), 2)
                                             for p in (1, 2)}, {1: 40, 2: 40}):
        rejoin.start(0)
    _, event = log.events[0]
    assert event["taken"] and event["from"] == "source" and weights == [] and "weight" not in event, event


def test_with_no_source_answering_a_restarted_peer_recovers_from_its_replica(inproc, monkeypatch):
    import dlion.rejoin
    monkeypatch.setattr(dlion.rejoin, "WAIT_S", 0.5)
    trainers = {p: Trainer(float(p + 1), size=100) for p in PEERS}
    transports, replicas = network(inproc, trainers)
    rounds(replicas, trainers, 0, 8, weight=0.6)
    mine = state_of(trainers[0])
    others_at(transports, 500)
    weights = []
    rejoin, log = restarted(transports, trainers, replicas, weights)
    with looping(lambda: replicas[1].answer(500)):  # nobody answers rejoin requests, the holder's replica does
        at = rejoin.start(0)
    _, event = log.events[0]
    assert event["taken"] and event["from"] == "replica" and event["from_peer"] == 1 and weights == [0.6]
    np.testing.assert_array_equal(state_of(trainers[0]), mine)
    assert at >= 500


def test_an_empty_last_slice_of_a_small_state_without_the_optimizer_goes_too(inproc):
    trainers = {p: Trainer(float(p + 1), size=9) for p in PEERS}  # 9 entries in 4 slices of 3: the last is empty
    transports, replicas = network(inproc, trainers, refresh_every=1, chunks=4, optimizer=False)
    rounds(replicas, trainers, 0, 4, rng=np.random.default_rng(2))
    rounds(replicas, trainers, 4, 4)
    answer = ask(transports, replicas, 1)
    np.testing.assert_array_equal(answer.tensors["p"], trainers[0].params)
    assert answer.tensors["o"].size == 0
