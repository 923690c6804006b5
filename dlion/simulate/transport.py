"""The in-process transport in virtual time: the same wire encoding, validation, mailbox and counters as a real
peer's, but a message reaches its receiver at the virtual time its link says (`links.SimLinks`), delivered by the
scheduler, and a stage that waits for messages waits in virtual time.

Only the waiting differs from the real mailbox (`VirtualMailbox`: a wait parks the peer's actor until its deadline
or until a message is filed for it, instead of blocking on a condition; its `_wait` and `_wake` hooks are all the
mailbox's condition is used through), and only the sending and the start from the in-process transport
(`VirtualTransport`). Both take their lock through `_SettlingLock`, which makes a peer pay the compute it owes before
it reads what it received (`scheduler`: work is paid lazily). The simulated network is up from time 0: there is no
hello barrier (every peer is on the hub before any starts), and a peer's bye travels its links behind what it sent
before.
"""
from __future__ import annotations

import functools
import threading

from dlion.transport.inproc import InprocHub, InprocTransport
from dlion.messages import BACK
from dlion.transport.mailbox import Mailbox
from dlion.transport.wire import Message, WireLimits

from .links import SimLinks
from .scheduler import Actor


class _SettlingLock:
    """A lock a simulated peer pays its compute debt (`Actor.settle`) before it takes, so that it never looks at what
    it received before the messages due by its own time have been delivered. While the peer owes nothing its owner
    holds the plain lock instead (`arm`, `disarm`: the actor's guards), the same underlying one."""

    def __init__(self, actor: Actor, owner: object, attribute: str):
        self._actor, self._owner, self._attribute = actor, owner, attribute
        self._lock = threading.RLock()
        self.release = self._lock.release
        setattr(owner, attribute, self._lock)
        actor.guards.append(self)

    def arm(self) -> None:
        setattr(self._owner, self._attribute, self)

    def disarm(self) -> None:
        setattr(self._owner, self._attribute, self._lock)

    def acquire(self) -> None:
        actor = self._actor
        if actor._debt and actor.scheduler.current is actor and not self._lock._is_owned():
            actor.settle()  # never while holding the lock: a delivery could not file meanwhile
        self._lock.acquire()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self._lock.release()


class VirtualMailbox(Mailbox):
    """A mailbox whose waits take virtual time: the owner's actor parks (the mailbox's lock released meanwhile, so
    deliveries can file messages) and is resumed at the deadline or by the next message filed; and whose lock makes
    the owner settle its debt first."""

    def __init__(self, actor: Actor, **kwargs):
        super().__init__(**kwargs)
        self.actor = actor
        self._awaited: tuple[str, set[int]] | None = None  # (kind, senders not heard from yet) of the wait under way
        _SettlingLock(actor, self, "_cond")  # waits and wakes are the actor's: a lock is all the condition is

    def _wait(self, timeout: float, kind: str, senders: set[int]) -> None:
        self._awaited = (kind, set(senders))
        self._cond.release()
        try:
            self.actor.wait(self.clock() + timeout)
        finally:
            self._cond.acquire()
            self._awaited = None

    def _wake(self, msg: Message | None = None) -> None:
        """Resume the waiter once every sender it waits for has filed a message of its kind (it checks the rounds
        itself, and waits again if need be), or at once on a departure or a `back` (which end waits too); other
        messages cannot end its wait, so they leave it parked: a peer waiting for 255 figures wakes once, not 255
        times."""
        if self._awaited is not None and msg is not None and msg.kind != BACK:
            kind, senders = self._awaited
            if msg.kind != kind or msg.sender not in senders:
                return
            senders.discard(msg.sender)
            if senders:
                return
        self.actor.wake()


class VirtualTransport(InprocTransport):
    """A simulated peer's transport on `hub`: messages leave at once and arrive when `links` says; `actor` is the
    peer's, whose clock is the scheduler's."""

    def __init__(self, peer_id: int, hub: InprocHub, limits: WireLimits, actor: Actor, links: SimLinks, **bounds):
        clock = actor.scheduler.clock
        super().__init__(peer_id, hub, limits, clock=clock, wall=clock,
                         mailbox_type=functools.partial(VirtualMailbox, actor), **bounds)
        _SettlingLock(actor, self, "_stats_lock")  # link estimates and counters are read at the peer's own time too
        self.actor = actor
        self.scheduler = actor.scheduler
        self.links = links
        self._joined = False

    def start(self) -> None:
        """Join the hub (once: the simulator joins every peer before any starts)."""
        if not self._joined:
            self.hub.join(self)
            self._joined = True

    def wait_for_peers(self, timeout_s: float) -> set[int]:
        """Every peer is on the hub from time 0: all are reachable, no hellos needed."""
        return set(self.peers)

    def _send_frames(self, dst: int, frames: list, nbytes: int) -> None:
        frames = [bytes(f) for f in frames]  # a copy now: the sender may reuse its arrays before the arrival
        arrival = self.links.arrival(self.peer_id, dst, nbytes, self.scheduler.clock())  # the sender's own time
        label = f"deliver {self.peer_id}>{dst} {nbytes}B" if self.scheduler.trace is not None else ""
        self.scheduler.at(arrival, lambda: self._hand_over(dst, frames, nbytes), label)

    def _deliver(self, frames, routing_sender) -> None:
        """File an arriving message; with `--cpu-overhead`, the decoding and checks it took this host are the
        receiver's to pay (a real peer's communication thread takes them from its cores), before it next looks at
        its mailbox."""
        meter = self.actor.meter
        if meter is None:
            super()._deliver(frames, routing_sender)
            return
        with meter.elsewhere():
            super()._deliver(frames, routing_sender)

    def _shutdown(self, bye: list, nbytes: int) -> None:
        for p in sorted(self.peers):  # behind what was sent before: a bye must not overtake the last round
            self._send_frames(p, bye, nbytes)
        self.hub.leave(self)
