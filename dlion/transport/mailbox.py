"""Mailbox: decoded messages keyed by (kind, round, sender), with waiting, staleness, lateness and suspicion.

Stages never poll the network: they `take` what a round needs (lockstep: one message per sender for the round), or
`collect` every message up to a round that they have not used yet (overlapped rounds with bounded staleness), and
the mailbox wakes them the moment the last expected message is filed, or at their deadline; or they `drain`, without
waiting, whatever has come of a kind that is answered whenever it comes (asynchronous gossip).

Hostile traffic cannot crowd it out: a message for a round more than `window` ahead of the peer's own round (the
highest round a stage has asked for) is refused (but the kinds numbered by their senders' own rounds:
`messages.UNWINDOWED`), as is one that would take a sender's held bytes over `max_held_bytes`; nothing already held
is ever evicted for a newer message, except old rounds of kinds that are not collected (read with `latest`). Only a
message that is filed is a sign of life (it re-admits a departed sender), and only delivering a round's messages
clears suspicion; a stage's screen (`screen`, the transport's norm guard) judges collected messages before they are
handed out.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable, Iterable

from dlion.messages import ANNOUNCEMENTS, BACK, COLLECTED, UNWINDOWED

from .wire import Message


class Mailbox:
    """Thread-safe; `put` is called by the transport, `take`/`latest` by the stages."""

    def __init__(self, suspect_after: int = 2, keep_rounds: int = 64, window: int = 256,
                 max_held_bytes: int = 64 << 20, screen: Callable[[Message], bool] = lambda msg: True,
                 clock: Callable[[], float] = time.monotonic, outbox=None):
        """`keep_rounds` bounds the rounds held per (kind, sender) of the kinds stages do not collect (those read
        with `latest`); `screen(msg)` is False for a message a stage must not get (`collect` and `latest` apply it;
        `take` serves kinds without tensors). `clock` is what deadlines are measured on; a simulation in virtual
        time also overrides `_wait` and `_wake` (`dlion.simulate.transport`). `outbox`: the owner's held messages
        (`transport.outbox`), sent before it waits for anyone."""
        self.clock = clock
        self.outbox = outbox
        self.suspect_after = suspect_after
        self.keep_rounds = keep_rounds
        self.window = window
        self.max_held_bytes = max_held_bytes
        self.screen = screen
        self._round = 0
        self._held: dict[int, int] = defaultdict(int)  # bytes held per sender
        self._cond = threading.Condition()
        self._store: dict[str, dict[int, dict[int, Message]]] = defaultdict(lambda: defaultdict(dict))
        self._low: dict[str, int] = {}
        self._latest: dict[tuple[str, int], Message] = {}
        self._filed: dict[str, int] = defaultdict(int)  # messages filed so far per kind (`filed`)
        self._screened: dict[tuple[str, int], Message] = {}  # the latest message per key once it passed the screen
        self._newest: dict[tuple[str, int], int] = {}  # the highest round filed per (kind, sender)
        self._beyond: dict[int, int] = {}  # the highest round per sender refused as beyond the window
        self._back_at: dict[int, int] = {}  # a rejoined sender takes part from this round on (`back` message)
        self._rejoined_at = 0  # this peer takes part from this round on (it rejoined): the others send from there
        self._misses: dict[int, int] = defaultdict(int)
        self._departed: set[int] = set()
        self._said_bye: set[int] = set()
        self._unreachable: set[int] = set()  # departed as our connection to them dropped, and not back up yet

    @property
    def round(self) -> int:
        """The highest round a stage has asked for (or that `advance` moved the window to)."""
        with self._cond:
            return self._round

    def newest_rounds(self) -> dict[int, int]:
        """The highest round each sender was seen at: of a message filed, or refused as beyond the window (a peer
        that fell far behind learns so from what it cannot file)."""
        with self._cond:
            return self._seen_rounds()

    def _seen_rounds(self) -> dict[int, int]:
        """`newest_rounds`, with the condition held."""
        seen = dict(self._beyond)
        for (_, sender), round_ in self._newest.items():
            seen[sender] = max(round_, seen.get(sender, round_))
        return seen

    def advance(self, round_: int) -> None:
        """Move the window to at least `round_`: a rejoining peer accepts the rounds the others are at."""
        with self._cond:
            self._round = max(self._round, round_)

    def put(self, msg: Message) -> str | None:
        """File `msg`; None if filed, else why not: "late" (below the kind's low-water mark), "beyond window",
        "sender memory" (the bounds in the module docstring), or "duplicate" (a second message of a collected kind for
        the same round from the same sender).

        A filed message proves its sender is alive: it re-admits a sender that had departed (a restarted peer, a
        connection that came back; `bye` is the last message on a connection, so nothing older can follow it), except
        an announcement (`messages.ANNOUNCEMENTS`: a hello, a rejoin request), which a peer sends before it takes part
        in rounds again, so nobody waits for it meanwhile, and except while our own connection to the sender is down
        (`mark_departed(unreachable=True)` until `reachable`): a killed process's last messages still drain from its
        kernel's socket buffers for seconds after its death, behind a slow link, and must not make anyone wait for
        it. One that is not filed proves nothing. Suspicion is cleared
        only by a `take` or `collect` that finds what it waited for: a sender that sends anything else, but not its
        round's messages, is still not waited for.
        """
        with self._cond:
            if msg.round < self._low.get(msg.kind, 0):
                return "late"
            if msg.round > self._round + self.window and msg.kind not in UNWINDOWED:
                self._beyond[msg.sender] = max(msg.round, self._beyond.get(msg.sender, msg.round))
                return "beyond window"
            rounds = self._store[msg.kind][msg.sender]
            replaced = rounds.get(msg.round)
            if replaced is not None and msg.kind in COLLECTED:
                return "duplicate"  # a sender sends one per round: a second is forged, and replacing would lose mass
            growth = msg.nbytes - (replaced.nbytes if replaced is not None else 0)
            if self._held[msg.sender] + growth > self.max_held_bytes:
                return "sender memory"
            if msg.kind not in ANNOUNCEMENTS and msg.sender not in self._unreachable:
                self._departed.discard(msg.sender)
                self._said_bye.discard(msg.sender)
            if msg.kind == BACK:
                self._back_at[msg.sender] = msg.meta["at"]
            rounds[msg.round] = msg
            self._held[msg.sender] += growth
            if len(rounds) > self.keep_rounds and msg.kind not in COLLECTED:
                self._forget(msg.sender, rounds.pop(min(rounds)))
            self._latest[(msg.kind, msg.sender)] = msg
            self._filed[msg.kind] += 1
            key = (msg.kind, msg.sender)
            self._newest[key] = max(msg.round, self._newest.get(key, msg.round))
            self._wake(msg)
            return None

    def _wait(self, timeout: float, kind: str, senders: set[int]) -> None:
        """Block (the condition held) until a `put` or a departure wakes the waiter, or `timeout` seconds passed;
        the waiter waits for messages of `kind` from `senders` (a hint for a virtual-time mailbox: the waiter checks
        again whenever it wakes)."""
        self._cond.wait(timeout)

    def _pause(self, timeout: float, kind: str, senders: set[int]) -> None:
        """`_wait`, but first send what the owner holds for peers that may be waiting for it (the condition released
        meanwhile), and then return at once for the waiter to check again: a peer never waits for others while its own
        round's messages, which they may be waiting for, are still held.

        A peer last seen two or more rounds behind this one's round t is at round t - 1 at most, and whatever its
        staleness bound, waits for rounds of ours up to t - 1, all sent: what is held for it stays held, to leave with
        the rest of the round as one message. That is the peer waited for, typically."""
        if self.outbox is not None and (due := self._maybe_waiting(self.outbox.destinations())):
            self._cond.release()
            try:
                self.outbox.flush(due)
            finally:
                self._cond.acquire()
            return
        self._wait(timeout, kind, senders)

    def _maybe_waiting(self, peers: set[int]) -> set[int]:
        """Of `peers`, those not seen two or more rounds behind this peer's round (never seen: maybe waiting)."""
        seen = self._seen_rounds()
        return {p for p in peers if seen.get(p, self._round) >= self._round - 1}

    def _wake(self, msg: Message | None = None) -> None:
        """Wake whoever waits for what this mailbox holds (the condition held): `msg` was filed, or (None) a sender
        departed."""
        self._cond.notify_all()

    def _forget(self, sender: int, msg: Message) -> None:
        self._held[sender] -= msg.nbytes

    def collect(self, kind: str, round: int, senders: Iterable[int], deadline: float,
                staleness: int = 0) -> dict[int, list[Message]]:
        """Every message of `kind` with a round up to `round` not collected before, per sender in round order; first
        waiting (until `deadline`) only while an expected sender has sent nothing for `round - staleness` or later.

        Collected messages leave the mailbox; later rounds stay for a later call, and a message that arrives after
        its round was collected is collected next time: nothing is late. Departed and suspected senders are not
        waited for (their messages are still collected), and a sender that did not meet the bound by the deadline
        counts a miss, as with `take`.
        """
        senders = set(senders)
        with self._cond:
            self._round = max(self._round, round)
            behind = self._wait_behind(kind, round - staleness, senders, deadline)
            for s in senders - self._departed:
                if s in behind:
                    self._misses[s] += 1
                else:
                    self._misses.pop(s, None)
            return self._take_out(kind, round)

    def drain(self, kind: str, round: int) -> dict[int, list[Message]]:
        """Every message of `kind` held now, whatever its round, per sender in round order, at once (no waiting, no
        misses counted): for kinds numbered by their senders' own rounds, which a peer uses whenever they come
        (AD-PSGD's requests and replies: `dlion.gossip.adpsgd`). `round` is this peer's: the window moves to it, as
        with `collect`."""
        with self._cond:
            self._round = max(self._round, round)
            return self._take_out(kind, None)

    def _take_out(self, kind: str, up_to: int | None) -> dict[int, list[Message]]:
        """Remove the messages of `kind` with a round up to `up_to` (None: all) and return those that pass the
        screen, per sender in round order. With the condition held."""
        found = {}
        for s, rounds in self._store.get(kind, {}).items():
            ready = sorted(r for r in rounds if up_to is None or r <= up_to)
            for r in ready:
                self._forget(s, rounds[r])
            passed = [m for m in (rounds.pop(r) for r in ready) if self.screen(m)]
            if passed:
                found[s] = passed
        return found

    def take(self, kind: str, round: int, senders: Iterable[int], deadline: float,
             staleness: int = 0) -> dict[int, Message]:
        """Wait until every expected sender has a message with round in [round - staleness, round] (newest
        wins) or until `deadline` (on the mailbox's `clock`); return what is there.

        Departed and suspected senders are not waited for, nor a sender that said it is back from a later round on
        (a rejoined peer: `back`). Rounds are taken in increasing order, so afterwards
        nothing below `round - staleness + 1` can be used any more: the low-water mark for `kind` rises there, older
        entries are dropped, and a message arriving below it counts as late (a straggler for a finished round).
        """
        senders = set(senders)
        oldest = round - staleness
        with self._cond:
            self._round = max(self._round, round)
            while True:
                found = self._collect(kind, senders, oldest, round)
                ahead = {s for s in senders if self._back_later(s, round)}
                waiting = senders - found.keys() - ahead - self._departed - self._suspected()
                remaining = deadline - self.clock()
                if not waiting or remaining <= 0:
                    break
                self._pause(remaining, kind, waiting)
            for s in senders - self._departed:
                if s in found or s in ahead:
                    self._misses.pop(s, None)
                else:
                    self._misses[s] += 1
            self._raise_low(kind, oldest + 1)
            return found

    def held(self, kind: str, sender: int) -> dict[int, Message]:
        """The messages of `kind` held now from `sender`, by round (a kind that is not collected: its last
        `keep_rounds` rounds); nothing is taken, nobody's suspicion changes."""
        with self._cond:
            return dict(self._store.get(kind, {}).get(sender, {}))

    def wait_for(self, kind: str, round: int, senders: Iterable[int], deadline: float) -> bool:
        """Wait (until `deadline`) until every sender, but those departed or suspected, has sent `kind` for `round` or
        later; True if they all have. Nothing is taken, and nobody counts a miss."""
        with self._cond:
            return not self._wait_behind(kind, round, set(senders), deadline) - self._departed - self._suspected()

    def _wait_behind(self, kind: str, needed: int, senders: set[int], deadline: float) -> set[int]:
        """Wait until no live sender is behind round `needed` of `kind`, or until `deadline`; the senders behind
        (departed and suspected ones included). With the condition held."""
        while True:
            behind = {s for s in senders
                      if self._newest.get((kind, s), -1) < needed and not self._back_later(s, needed)}
            remaining = deadline - self.clock()
            awaited = behind - self._departed - self._suspected()
            if not awaited or remaining <= 0:
                return behind
            self._pause(remaining, kind, awaited)

    def _collect(self, kind: str, senders: set[int], oldest: int, newest: int) -> dict[int, Message]:
        found = {}
        by_sender = self._store.get(kind, {})
        for s in senders:
            rounds = [r for r in by_sender.get(s, ()) if oldest <= r <= newest]
            if rounds:
                found[s] = by_sender[s][max(rounds)]
        return found

    def _raise_low(self, kind: str, low: int) -> None:
        if low <= self._low.get(kind, 0):
            return
        self._low[kind] = low
        for sender, rounds in self._store.get(kind, {}).items():
            for r in [r for r in rounds if r < low]:
                self._forget(sender, rounds.pop(r))

    def filed(self, kind: str) -> int:
        """How many messages of `kind` were filed so far: whether anything came since a caller last looked, without
        a look per sender (a peer checks for rejoin requests between every two steps)."""
        return self._filed[kind]

    def latest(self, kind: str, sender: int) -> Message | None:
        """The most recently filed message of `kind` from `sender`, whatever its round, if it passes the screen
        (one that does not is forgotten)."""
        with self._cond:
            msg = self._latest.get((kind, sender))
            if msg is None or msg is self._screened.get((kind, sender)):
                return msg
            if not self.screen(msg):
                del self._latest[(kind, sender)]
                return None
            self._screened[(kind, sender)] = msg
            return msg

    def latest_before(self, kind: str, sender: int, round: int) -> Message | None:
        """The newest message of `kind` from `sender` with a round below `round` (among the last `keep_rounds`):
        what every peer has seen by then in lockstep training, unlike `latest`, which may already hold a faster
        peer's next round."""
        with self._cond:
            rounds = self._store.get(kind, {}).get(sender, {})
            earlier = [r for r in rounds if r < round]
            return rounds[max(earlier)] if earlier else None

    def mark_departed(self, sender: int, said_bye: bool = False, unreachable: bool = False) -> None:
        """Stop waiting for `sender` (it said bye, its connection dropped or stopped answering pings, or it never
        answered the hello barrier). `unreachable`: our connection to it dropped; its messages do not re-admit it
        until `reachable` says the connection is up again (a new process listens there, or the old one woke)."""
        with self._cond:
            self._departed.add(sender)
            if said_bye:
                self._said_bye.add(sender)
            if unreachable:
                self._unreachable.add(sender)
            self._wake()

    def reachable(self, sender: int) -> None:
        """Our connection to `sender` is up (again): its next message re-admits it."""
        with self._cond:
            self._unreachable.discard(sender)

    @property
    def departed(self) -> frozenset[int]:
        with self._cond:
            return frozenset(self._departed)

    def left(self) -> frozenset[int]:
        """Senders that said bye and sent nothing that re-admits them since."""
        with self._cond:
            return frozenset(self._said_bye)

    def departed_silently(self) -> frozenset[int]:
        """Departed senders that did not say bye: they may still be there (a host that froze, a cut link)."""
        with self._cond:
            return frozenset(self._departed - self._said_bye)

    def rejoined(self, round_: int) -> None:
        """This peer takes part in rounds from `round_` on (it rejoined and said `back`): the others send it their
        messages from that round on, so no sender is waited for before it. For the first rounds back, then, a lag of
        up to the staleness bound more than usual goes unwaited-for: else each of them would wait for the others' first
        messages, whole models on a slow link, as if it were lockstep."""
        with self._cond:
            self._rejoined_at = max(self._rejoined_at, round_)

    @property
    def rejoined_at(self) -> int:
        """The round this peer last rejoined at (`rejoined`; 0 if it never did)."""
        return self._rejoined_at

    def _back_later(self, sender: int, round_: int) -> bool:
        """`sender` said it takes part only from a round after `round_` on (`back`), or this peer does (`rejoined`):
        nothing to wait for before."""
        return max(self._back_at.get(sender, 0), self._rejoined_at) > round_

    def _suspected(self) -> frozenset[int]:
        """Senders that missed `suspect_after` consecutive takes and sent nothing since."""
        return frozenset(s for s, n in self._misses.items() if n >= self.suspect_after)
