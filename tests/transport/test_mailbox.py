"""Mailbox: waiting, deadlines, staleness, lateness, departures and suspicion."""
import threading
import time

import pytest

from dlion.transport import Mailbox, Message


def msg(kind, sender, round, **meta):
    return Message(kind, sender, round, meta, {}, 0)


def put_later(mb, delay, *messages):
    """Put `messages` from another thread after `delay` seconds."""
    def run():
        time.sleep(delay)
        for m in messages:
            mb.put(m)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def timed_take(mb, *args, **kwargs):
    t0 = time.monotonic()
    got = mb.take(*args, **kwargs)
    return got, time.monotonic() - t0


def test_take_returns_as_soon_as_the_last_message_lands():
    mb = Mailbox()
    mb.put(msg("grad", 1, 0))
    put_later(mb, 0.15, msg("grad", 2, 0))
    got, elapsed = timed_take(mb, "grad", 0, [1, 2], time.monotonic() + 5)
    assert sorted(got) == [1, 2]
    assert 0.14 <= elapsed < 0.4


def test_take_returns_immediately_when_there_is_nothing_to_wait_for():
    for senders in ([], [1], [1, 2]):
        mb = Mailbox()
        mb.put(msg("grad", 1, 4))
        mb.mark_departed(2)
        got, elapsed = timed_take(mb, "grad", 4, senders, time.monotonic() + 5)
        assert elapsed < 0.05 and sorted(got) == sorted(set(senders) & {1})


def test_take_returns_at_the_deadline_with_what_it_has():
    mb = Mailbox()
    mb.put(msg("grad", 1, 0))
    put_later(mb, 0.05, msg("grad", 3, 0), msg("eval", 2, 0), msg("eval", 2, 1))  # not what we wait for
    got, elapsed = timed_take(mb, "grad", 0, [1, 2, 3], time.monotonic() + 0.3)
    assert sorted(got) == [1, 3]
    assert 0.3 <= elapsed <= 0.5


def test_staleness_window_newest_wins():
    mb = Mailbox()
    for r in (2, 3, 4, 6):
        mb.put(msg("grad", 1, r))
    mb.put(msg("grad", 2, 3))
    got = mb.take("grad", 5, [1, 2], time.monotonic() + 1, staleness=2)
    assert {s: m.round for s, m in got.items()} == {1: 4, 2: 3}
    assert mb.take("grad", 2, [1], time.monotonic()) == {}, "rounds below the low-water mark (5 - 2 + 1) are dropped"


def test_late_messages_below_the_low_water_mark_are_discarded():
    mb = Mailbox()
    mb.take("grad", 5, [], time.monotonic(), staleness=1)  # the next take (6, staleness 1) can use rounds >= 5
    assert mb.put(msg("grad", 1, 4)) == "late"
    assert mb.put(msg("grad", 1, 2)) == "late"
    assert mb.put(msg("grad", 2, 5)) is None
    assert mb.put(msg("eval", 1, 0)) is None, "the mark is per kind"
    assert mb.latest("grad", 1) is None, "late messages are not filed"
    assert mb.take("grad", 6, [2], time.monotonic(), staleness=1)[2].round == 5


def test_departed_senders_are_not_waited_for_but_still_returned():
    mb = Mailbox()
    mb.put(msg("grad", 2, 0))
    mb.mark_departed(2)
    mb.mark_departed(3)
    assert mb.departed == {2, 3}
    got, elapsed = timed_take(mb, "grad", 0, [2, 3], time.monotonic() + 5)
    assert list(got) == [2] and elapsed < 0.05


def test_a_departure_wakes_a_waiting_take():
    mb = Mailbox()
    threading.Timer(0.1, mb.mark_departed, args=(1,)).start()
    got, elapsed = timed_take(mb, "grad", 0, [1], time.monotonic() + 5)
    assert got == {} and elapsed < 0.3


def test_a_message_after_departure_readmits_the_sender_but_an_announcement_does_not():
    mb = Mailbox()
    mb.mark_departed(1)
    mb.put(msg("hello", 1, 0))
    mb.put(msg("rejoin", 1, 5))
    assert mb.departed == {1}  # back, but not in rounds yet: nobody waits for it
    mb.put(msg("grad", 1, 5))
    assert mb.departed == frozenset()


def test_a_sender_whose_connection_dropped_is_re_admitted_only_once_it_is_reachable_again():
    mb = Mailbox()
    mb.mark_departed(1, unreachable=True)
    mb.put(msg("grad", 1, 5))  # its dead process's last message, drained from the kernel's buffers
    assert mb.departed == {1} and 1 in mb.collect("grad", 5, [1], time.monotonic())
    mb.reachable(1)  # a process listens at its address again
    assert mb.departed == {1}  # being reachable says nothing of taking part in rounds
    mb.put(msg("grad", 1, 6))
    assert mb.departed == frozenset()


def test_a_sender_back_from_a_later_round_is_not_waited_for_before_it():
    mb = Mailbox()
    mb.mark_departed(1)
    mb.put(msg("back", 1, 7, at=7))  # peer 1 rejoined: it takes part from round 7
    assert mb.departed == frozenset()
    for round_ in (5, 6):
        got, elapsed = timed_take(mb, "grad", round_, [1], time.monotonic() + 1.0)
        assert got == {} and elapsed < 0.1
        assert mb.collect("gossip", round_, [1], time.monotonic() + 1.0) == {}
    assert suspected(mb) == frozenset()  # skipping rounds is no miss
    got, elapsed = timed_take(mb, "grad", 7, [1], time.monotonic() + 0.2)
    assert got == {} and elapsed >= 0.2  # from round 7 on it is waited for


def test_a_peer_back_from_a_round_waits_for_no_sender_before_it():
    """Its first rounds back go on as the staleness bound allows: the others' messages before its `back` round were
    never sent to it."""
    mb = Mailbox()
    mb.put(msg("grad", 1, 3))  # from before it left
    mb.rejoined(20)
    mb.advance(20)
    collected = []
    for round_ in (20, 21):
        t0 = time.monotonic()
        collected.append(mb.collect("grad", round_, [1], time.monotonic() + 1.0, staleness=2))
        assert time.monotonic() - t0 < 0.1
    assert [{s: [m.round for m in ms] for s, ms in got.items()} for got in collected] == [{1: [3]}, {}]
    assert suspected(mb) == frozenset()
    t0 = time.monotonic()
    mb.collect("grad", 22, [1], time.monotonic() + 0.2, staleness=2)  # 20 is its back round: waited for
    assert time.monotonic() - t0 >= 0.2
    got, elapsed = timed_take(mb, "grad", 20, [1], time.monotonic() + 0.2)
    assert got == {} and elapsed >= 0.2, "in lockstep its back round's message is waited for"


def suspected(mb):
    """The senders a take would not wait for (white box: the mailbox keeps this to itself)."""
    with mb._cond:
        return mb._suspected()


def test_suspicion_after_consecutive_misses_and_clearing():
    mb = Mailbox(suspect_after=2)
    for r in range(2):
        mb.put(msg("grad", 1, r))
        assert 2 not in suspected(mb)
        got, elapsed = timed_take(mb, "grad", r, [1, 2], time.monotonic() + 0.1)
        assert list(got) == [1] and elapsed >= 0.1
    assert suspected(mb) == {2}
    mb.put(msg("grad", 1, 2))
    got, elapsed = timed_take(mb, "grad", 2, [1, 2], time.monotonic() + 5)
    assert list(got) == [1] and elapsed < 0.05, "a suspect is not waited for"
    mb.put(msg("report", 2, 0))
    assert suspected(mb) == {2}, "a message of another kind proves nothing: anyone could send one as peer 2"
    mb.put(msg("grad", 2, 3))
    mb.put(msg("grad", 1, 3))
    assert sorted(mb.take("grad", 3, [1, 2], time.monotonic() + 5)) == [1, 2]
    assert suspected(mb) == frozenset(), "delivering what the round waits for clears it"
    put_later(mb, 0.1, msg("grad", 2, 4))
    mb.put(msg("grad", 1, 4))
    got, elapsed = timed_take(mb, "grad", 4, [1, 2], time.monotonic() + 5)
    assert sorted(got) == [1, 2] and 0.09 <= elapsed < 0.3


def test_a_take_that_gets_the_message_resets_the_miss_count():
    mb = Mailbox(suspect_after=2)
    mb.take("grad", 0, [1], time.monotonic())
    mb.put(msg("grad", 1, 1))
    mb.take("grad", 1, [1], time.monotonic())
    mb.take("grad", 2, [1], time.monotonic())
    assert suspected(mb) == frozenset()
    mb.take("grad", 3, [1], time.monotonic())
    assert suspected(mb) == {1}


def test_latest_is_the_most_recent_arrival_whatever_the_round():
    mb = Mailbox()
    assert mb.latest("report", 1) is None
    mb.put(msg("report", 1, 5, v=1))
    mb.put(msg("report", 1, 3, v=2))
    mb.put(msg("score", 1, 9))
    assert mb.latest("report", 1).meta == {"v": 2}


def test_rounds_kept_per_sender_are_bounded():
    mb = Mailbox(keep_rounds=4)
    for r in range(10):
        mb.put(msg("report", 1, r))
    assert mb.take("report", 9, [1], time.monotonic(), staleness=9)[1].round == 9
    assert mb.take("report", 5, [1], time.monotonic(), staleness=0) == {}
    assert mb.latest("report", 1).round == 9


@pytest.mark.parametrize("n_waiters", [1, 3])
def test_concurrent_takers_of_different_kinds(n_waiters):
    mb = Mailbox()
    results = {}
    kinds = ["grad", "model", "eval"][:n_waiters]

    def waiter(kind):
        results[kind] = mb.take(kind, 1, [1], time.monotonic() + 5)

    threads = [threading.Thread(target=waiter, args=(k,)) for k in kinds]
    for t in threads:
        t.start()
    put_later(mb, 0.05, *[msg(k, 1, 1) for k in kinds]).join()
    for t in threads:
        t.join(1)
    assert {k: list(v) for k, v in results.items()} == {k: [1] for k in kinds}


def test_collect_waits_only_for_a_sender_more_than_staleness_rounds_behind():
    mb = Mailbox()
    mb.put(msg("grad", 1, 3))  # sender 1 is at round 3, sender 2 at round 2
    mb.put(msg("grad", 2, 2))
    got, elapsed = timed_take_all(mb, 5, [1, 2], time.monotonic() + 0.2, staleness=3)
    assert elapsed < 0.05 and {s: [m.round for m in ms] for s, ms in got.items()} == {1: [3], 2: [2]}
    mb.put(msg("grad", 2, 3))
    got, elapsed = timed_take_all(mb, 6, [1, 2], time.monotonic() + 0.2, staleness=2)  # 2 is s + 1 behind
    assert elapsed >= 0.2 and {s: [m.round for m in ms] for s, ms in got.items()} == {2: [3]}


def test_collect_gives_every_message_once_in_order_and_keeps_later_rounds():
    mb = Mailbox()
    for r in (2, 0, 1, 5):
        mb.put(msg("grad", 1, r))
    got, _ = timed_take_all(mb, 3, [1], time.monotonic() + 1, staleness=1)
    assert [m.round for m in got[1]] == [0, 1, 2]
    mb.put(msg("grad", 1, 3))  # after its round was collected: not late, collected next time
    got, _ = timed_take_all(mb, 5, [1], time.monotonic() + 1, staleness=1)
    assert [m.round for m in got[1]] == [3, 5]
    assert mb.put(msg("grad", 1, 4)) is None


def timed_take_all(mb, round_, senders, deadline, staleness):
    start = time.monotonic()
    got = mb.collect("grad", round_, senders, deadline, staleness)
    return got, time.monotonic() - start


def test_an_evaluation_figure_far_ahead_is_filed_and_held_without_being_taken():
    mb = Mailbox(window=10)
    assert mb.put(msg("grad", 1, 500)) == "beyond window"
    assert mb.put(msg("eval", 1, 500, acc=0.9)) is None  # a faster peer's figure, for a round reached much later
    assert mb.put(msg("eval", 1, 520, acc=0.91)) is None
    assert sorted(mb.held("eval", 1)) == [500, 520] and mb.held("eval", 2) == {}
    assert sorted(mb.held("eval", 1)) == [500, 520], "held is no take"


def test_drain_takes_every_round_at_once_and_moves_the_window():
    mb = Mailbox(window=10)
    for r in (40, 3, 900):  # requests are numbered by their senders' own rounds: filed whatever the round
        assert mb.put(msg("avg-request", 1, r)) is None
    mb.put(msg("avg-request", 2, 5))
    start = time.monotonic()
    got = mb.drain("avg-request", 7)
    assert time.monotonic() - start < 0.05
    assert {s: [m.round for m in ms] for s, ms in got.items()} == {1: [3, 40, 900], 2: [5]}
    assert mb.drain("avg-request", 7) == {} and mb.round == 7
    assert mb.put(msg("avg-reply", 1, 17)) is None and mb.put(msg("avg-reply", 1, 18)) == "beyond window"
