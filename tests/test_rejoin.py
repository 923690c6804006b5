"""Rejoining across in-process peers with stand-in trainers (flat parameter and optimizer vectors; no TF)."""
import contextlib
import threading
import time

import numpy as np

from conftest import stage_context
from dlion import messages, rejoin
from dlion.rejoin import LEAD, Rejoin

PEERS = (0, 1, 2)
EVERY = 10


class Trainer:
    """The part of the trainer rejoining uses: parameters and optimizer state as flat vectors."""

    def __init__(self, value: float, size: int = 500):
        self.params = np.full(size, value, np.float32)
        # a step count and a learning rate that bfloat16 would round, then the moments
        self.optimizer = np.concatenate([[1001 + value, 0.0021], np.full(2 * size, value / 10)]).astype(np.float32)

    @property
    def num_state(self):
        return self.params.size

    num_params = num_state  # no non-trainable variables

    def get_params(self):
        return self.params.copy()

    def set_params(self, flat):
        self.params = np.array(flat, np.float32)

    def optimizer_vector(self):
        return self.optimizer.copy()

    def optimizer_scalars(self):
        return np.array([0, 1])

    def set_optimizer_vector(self, flat):
        if len(flat) != len(self.optimizer):
            raise ValueError("does not fit")
        self.optimizer = np.array(flat, np.float32)


class Log:
    def __init__(self):
        self.events = []

    def emit(self, ev, **fields):
        self.events.append((ev, fields))


def peers(transports, trainers):
    logs = {p: Log() for p in transports}
    return {p: Rejoin(stage_context(transports, p), trainers[p], logs[p], EVERY, elapsed=lambda p=p: 100.0 + p)
            for p in transports}, logs


def advance(transports, p, round_):
    """Peer p has trained up to `round_`: what its mailbox and its hellos say."""
    transports[p].mailbox.advance(round_)


@contextlib.contextmanager
def looping(step, pause=0.005):
    """`step()` over and over in the background (the other peers' loops) while the block runs."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            step()
            time.sleep(pause)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def answering(rejoins, rounds):
    """The peers of `rounds` run their loops' rejoin step (at their fixed rounds) in the background."""
    return looping(lambda: [rejoins[p].step(r) for p, r in rounds.items()])


def test_a_restarted_peer_starts_at_the_others_round_with_a_leading_peers_parameters_and_optimizer_state(inproc):
    transports = inproc(PEERS)
    trainers = {0: Trainer(1.0), 1: Trainer(2.0), 2: Trainer(9.0)}
    rejoins, logs = peers(transports, trainers)
    for p in (0, 1):
        advance(transports, p, 300 + p)
    for t in transports.values():
        t.wait_for_peers(5)  # the hellos say where everyone is
    with answering(rejoins, {0: 300, 1: 301}):
        at = rejoins[2].start(0)
    ev, rejoin = logs[2].events[0]
    assert ev == "rejoin" and rejoin["at"] == at and rejoin["was_at"] == 0 and rejoin["asked"] in (0, 1)
    # LEAD rounds past the round the source answered at: the others start those after it is back
    assert at == {0: 300, 1: 301}[rejoin["asked"]] + LEAD and transports[2].mailbox.round == at
    assert rejoin["taken"] and rejoin["optimizer"] and rejoin["wait_s"] < 1.0, rejoin
    source = rejoin["asked"]
    np.testing.assert_array_equal(trainers[2].params, trainers[source].params)  # exact in float16
    # the optimizer's moments in bfloat16: half the bytes, within its rounding; its step count and learning rate exact
    np.testing.assert_allclose(trainers[2].optimizer, trainers[source].optimizer, rtol=2.0 ** -8)
    np.testing.assert_array_equal(trainers[2].optimizer[:2], trainers[source].optimizer[:2])
    size = trainers[2].params.size
    model, state = (transports[2].mailbox.latest(kind, source) for kind in (messages.MODEL, messages.OPTIMIZER))
    assert model.nbytes < 2 * size + 1024 and state.nbytes < 2 * (2 * size + 2) + 1024
    # it goes on with the others' clock, which ran on while the answer came and was taken
    assert 100.0 + source <= rejoins[2].train_s < 100.0 + source + rejoin["wait_s"] + 0.5
    assert logs[0].events == [] and logs[1].events == []
    time.sleep(0.05)
    for p in (0, 1):  # told where it takes part from: they do not wait for it before
        assert transports[p].mailbox.latest(messages.BACK, 2).meta["at"] == at


def test_a_peer_within_the_margin_keeps_its_own_state(inproc):
    transports = inproc(PEERS)
    trainers = {p: Trainer(float(p)) for p in PEERS}
    rejoins, logs = peers(transports, trainers)
    advance(transports, 0, EVERY)
    for t in transports.values():
        t.wait_for_peers(5)
    assert rejoins[2].start(0) == 0 and logs[2].events == []
    assert trainers[2].params[0] == 2.0


def test_a_lost_request_is_repeated_until_answered(inproc):
    transports = inproc(PEERS)
    trainers = {0: Trainer(1.0), 1: Trainer(1.0), 2: Trainer(9.0)}
    rejoins, logs = peers(transports, trainers)
    for p in (0, 1):
        advance(transports, p, 500)
    for t in transports.values():
        t.wait_for_peers(5)
    send, lost = transports[2].send, []

    def lossy_send(dst, kind, *args, **kwargs):
        if kind == messages.REJOIN and not lost:
            lost.append(dst)  # the first request never leaves
            return
        send(dst, kind, *args, **kwargs)

    transports[2].send = lossy_send
    with answering(rejoins, {0: 500, 1: 500}):
        at = rejoins[2].start(0)
    ev, rejoin = logs[2].events[0]
    assert lost and at == 500 + LEAD and rejoin["taken"] and 0.9 <= rejoin["wait_s"] < 2.0, rejoin  # REQUEST_EVERY_S
    np.testing.assert_array_equal(trainers[2].params, trainers[0].params)


def test_repeats_of_a_request_are_answered_once_and_a_new_round_again(inproc):
    transports = inproc(PEERS)
    trainers = {p: Trainer(float(p)) for p in PEERS}
    rejoins, _ = peers(transports, trainers)
    send, answers = transports[0].send, []

    def counting_send(dst, kind, *args, **kwargs):
        answers.append((dst, kind))
        send(dst, kind, *args, **kwargs)

    transports[0].send = counting_send
    for round_, pause in ((3, 0.02), (3, 1.0), (7, 0.02)):  # a request repeated while the whole model is still on
        transports[2].send(0, messages.REJOIN, round_)     # its way, then a new one (requests are rate-limited)
        time.sleep(pause)
        rejoins[0].step(40)
    assert answers.count((2, messages.MODEL)) == 2 and answers.count((2, messages.OPTIMIZER)) == 2
    assert transports[2].mailbox.latest(messages.MODEL, 0).round == 7


def test_a_repeat_long_after_the_answer_is_answered_again(inproc, monkeypatch):
    """The answer to a peer woken from a freeze can be dropped behind the queue of rounds sent to it before it froze:
    its repeats of the request, once ANSWER_AGAIN_S has passed, get a second answer."""
    monkeypatch.setattr(rejoin, "ANSWER_AGAIN_S", 0.3)
    transports = inproc(PEERS)
    rejoins, _ = peers(transports, {p: Trainer(float(p)) for p in PEERS})
    send, answers = transports[0].send, []

    def losing_first_answer(dst, kind, *args, **kwargs):
        answers.append(kind)
        if answers.count(messages.MODEL) > 1 or kind != messages.MODEL:
            send(dst, kind, *args, **kwargs)

    transports[0].send = losing_first_answer
    for pause in (0.05, 0.5):
        transports[2].send(0, messages.REJOIN, 3)
        time.sleep(pause)
        rejoins[0].step(40)
    assert answers.count(messages.MODEL) == 2
    assert transports[2].mailbox.latest(messages.MODEL, 0).round == 3


def test_an_unanswered_request_is_given_up_and_the_peer_trains_on_with_its_own_state(inproc, monkeypatch):
    import dlion.rejoin
    monkeypatch.setattr(dlion.rejoin, "WAIT_S", 0.3)
    transports = inproc(PEERS)
    trainers = {p: Trainer(float(p)) for p in PEERS}
    rejoins, logs = peers(transports, trainers)
    advance(transports, 0, 500)
    for t in transports.values():
        t.wait_for_peers(5)
    assert rejoins[2].start(0) == 0  # nobody answers: it trains on where it is, with its own state
    assert logs[2].events[0][1]["taken"] is False and trainers[2].params[0] == 2.0
    assert rejoins[2].step(0) == 0 and len(logs[2].events) == 1  # and does not ask again at once (RETRY_AFTER_S)


def test_a_peer_woken_after_a_freeze_learns_it_is_behind_from_messages_beyond_its_window(inproc):
    transports = inproc(PEERS)
    trainers = {0: Trainer(1.0), 1: Trainer(1.0), 2: Trainer(9.0)}
    rejoins, logs = peers(transports, trainers)
    for t in transports.values():
        t.wait_for_peers(5)
    window = transports[2].mailbox.window
    advance(transports, 0, window + 400)  # the others trained on while peer 2 was frozen
    transports[0].send(2, messages.GRAD, window + 400, {"g": np.zeros(3, np.float32)}, {"w": 1.0})
    time.sleep(0.05)
    assert transports[2].stats()[0].dropped == 1  # not filed: beyond the window
    with answering(rejoins, {0: window + 400}):
        at = rejoins[2].step(40)
    # the hello said 0, the answer window + 400 at once: at most an evaluation period more than LEAD
    assert window + 400 + LEAD <= at <= window + 400 + LEAD + EVERY and logs[2].events[0][1]["asked"] == 0 and logs[2].events[0][1]["taken"]
    np.testing.assert_array_equal(trainers[2].params, trainers[0].params)


def test_peers_that_departed_without_a_bye_are_knocked_on_and_their_answer_readmits_them(inproc):
    transports = inproc(PEERS)
    trainers = {p: Trainer(1.0) for p in PEERS}
    rejoins, logs = peers(transports, trainers)
    for t in transports.values():
        t.wait_for_peers(5)
    advance(transports, 0, 700)
    transports[2].mailbox.mark_departed(0)  # its heartbeat went unanswered while this peer was frozen
    transports[2].mailbox.mark_departed(1, said_bye=True)  # peer 1 finished: never knocked on
    assert transports[2].mailbox.departed_silently() == {0}
    at = 100
    with answering(rejoins, {0: 700}):
        for _ in range(20):
            at = rejoins[2].step(at)
            time.sleep(0.01)
    assert 0 not in transports[2].mailbox.departed and 1 in transports[2].mailbox.departed
    assert at == 700 + LEAD and logs[2].events[0][0] == "rejoin"


def test_a_peer_already_past_the_round_a_rejoined_peer_comes_back_at_says_from_which_round_it_sends_to_it(inproc):
    transports = inproc(PEERS)
    for t in transports.values():
        t.wait_for_peers(5)
    advance(transports, 0, 520)  # peer 0 went on faster than the rejoined peer expected
    advance(transports, 1, 480)
    advance(transports, 2, 500)  # the rejoined peer enters round 500
    transports[2].back([0, 1], 500)
    time.sleep(0.05)
    assert transports[0].mailbox.latest(messages.BACK, 2).meta["at"] == 500
    assert transports[2].mailbox.latest(messages.BACK, 0).meta["at"] == 521  # peer 0's messages to it start there
    assert transports[2].mailbox.latest(messages.BACK, 1) is None  # peer 1 is behind 500: it will send round 500
    got = transports[2].mailbox.take(messages.GRAD, 505, [0, 1], time.monotonic() + 0.3)
    assert got == {}  # waited only for peer 1 (0.3 s), not for peer 0 before 521


def test_a_request_for_a_round_still_ahead_is_answered_as_the_answerer_starts_it(inproc):
    transports = inproc(PEERS)
    trainers = {p: Trainer(float(p)) for p in PEERS}
    rejoins, _ = peers(transports, trainers)
    advance(transports, 0, 304)
    advance(transports, 2, 305)  # it comes back at 305
    transports[2].send(0, messages.REJOIN, 305)
    time.sleep(0.05)
    rejoins[0].step(304)
    time.sleep(0.05)
    assert transports[2].mailbox.latest(messages.MODEL, 0) is None  # not yet: its state of 305 does not exist
    trainers[0].params[:] = 7.0  # what round 304 made of it
    rejoins[0].step(305)
    time.sleep(0.05)
    model, state = (transports[2].mailbox.latest(kind, 0) for kind in (messages.MODEL, messages.OPTIMIZER))
    assert model.round == state.round == 305 and state.meta["at"] == 305 and model.tensors["x"][0] == 7.0


def test_where_models_never_mix_a_rejoining_peer_takes_the_state_of_the_round_it_comes_back_at(inproc):
    transports = inproc(PEERS)
    trainers = {0: Trainer(1.0), 1: Trainer(1.0), 2: Trainer(9.0)}
    logs = {p: Log() for p in PEERS}
    rejoins = {p: Rejoin(stage_context(transports, p), trainers[p], logs[p], EVERY, resync=True) for p in PEERS}
    rounds = {0: 3001, 1: 3001}
    for p in (0, 1):
        advance(transports, p, 3001)
    for t in transports.values():
        t.wait_for_peers(5)

    def others_train():  # the others go on in lockstep, a round at a time, their parameters the round's number
        for p in (0, 1):
            rounds[p] += 1
            trainers[p].params[:] = rounds[p]
            rejoins[p].step(rounds[p])

    with looping(others_train, pause=0.02):
        at = rejoins[2].start(0)
    ev, rejoin = logs[2].events[0]
    assert rejoin["taken"] and rejoin["resync"] and at > 3001 + LEAD - 1, rejoin
    # the parameters the others started round `at` with, not those of the round the first answer was of
    assert trainers[2].params[0] == at
    # in float32, which float16 is not past 2048: the peers go on from the very same parameters
    assert transports[2].mailbox.latest(messages.MODEL, 0).tensors["x"].dtype == np.float32


def test_a_peer_woken_from_a_freeze_catches_up_as_soon_as_the_others_are_more_than_lead_rounds_ahead(inproc):
    transports = inproc(PEERS)
    trainers = {0: Trainer(1.0), 1: Trainer(1.0), 2: Trainer(9.0)}
    logs = {p: Log() for p in PEERS}
    rejoins = {p: Rejoin(stage_context(transports, p), trainers[p], logs[p], EVERY, frozen_after_s=0.2)
               for p in PEERS}
    for t in transports.values():
        t.wait_for_peers(5)
    for p in (0, 1):
        advance(transports, p, 40 + LEAD + 1)  # the others went on while it stood still
    transports[0].knock([2]), transports[1].knock([2])  # their hellos say where they are
    time.sleep(0.05)
    with answering(rejoins, {0: 40 + LEAD + 1, 1: 40 + LEAD + 1}):
        assert rejoins[2].step(40) == 40  # its loop came by in time: within the training margin, it goes on
        assert rejoins[2].step(40) == 40 and logs[2].events == []
        time.sleep(0.3)  # frozen
        at = rejoins[2].step(40)
    assert at > 40 + LEAD and logs[2].events[0][1]["taken"]
    np.testing.assert_array_equal(trainers[2].params, trainers[0].params)


def test_a_peer_asking_to_rejoin_is_not_waited_for_until_it_is_back(inproc):
    transports = inproc(PEERS)
    for t in transports.values():
        t.wait_for_peers(5)
    advance(transports, 0, 12)
    transports[2].send(0, messages.GRAD, 10, {"g": np.zeros(3, np.float32)}, {"w": 1.0})  # woken: its last round
    transports[2].send(0, messages.REJOIN, 10)
    time.sleep(0.05)
    start = time.monotonic()
    assert transports[0].mailbox.collect(messages.GRAD, 12, [2], start + 2.0) and time.monotonic() - start < 0.5
    assert 2 in transports[0].mailbox.departed
    transports[2].back([0], 14)
    time.sleep(0.05)
    assert 2 not in transports[0].mailbox.departed


def test_between_local_steps_a_request_is_answered_with_the_state_as_it_is_unless_the_peers_resync(inproc):
    transports = inproc(PEERS)
    trainers = {p: Trainer(float(p)) for p in PEERS}
    logs = {p: Log() for p in PEERS}
    mixing = Rejoin(stage_context(transports, 0), trainers[0], logs[0], EVERY)
    lockstep = Rejoin(stage_context(transports, 1), trainers[1], logs[1], EVERY, resync=True)
    for asked in (0, 1):
        transports[2].send(asked, messages.REJOIN, 3)
    time.sleep(0.05)
    trainers[0].params[:] = 5.5  # partway through round 40's local steps
    mixing.answer_within(40)
    lockstep.answer_within(40)
    time.sleep(0.05)
    model = transports[2].mailbox.latest(messages.MODEL, 0)
    assert model.round == 3 and model.tensors["x"][0] == 5.5
    assert transports[2].mailbox.latest(messages.OPTIMIZER, 0).meta["at"] == 40
    assert transports[2].mailbox.latest(messages.MODEL, 1) is None  # the state a round starts with, at its start
