"""In-process transport: same interface, same wire encoding and validation, no sockets.

Delivery is synchronous (in the sender's thread) and copies every frame, as TCP would, so tests are
deterministic and a receiver never aliases a sender's arrays. Messages the link policy holds back are delivered at
their release time by a releaser thread, started on the first such send.
"""
from __future__ import annotations

import threading
import time

from .base import LinkPolicy, Transport
from .shaping import Holdback
from .wire import WireLimits


class InprocHub:
    """The 'network' of in-process transports: peer id -> started transport."""

    def __init__(self):
        self._lock = threading.Lock()
        self._members: dict[int, InprocTransport] = {}

    def join(self, transport: InprocTransport) -> None:
        with self._lock:
            if transport.peer_id in self._members:
                raise ValueError(f"peer {transport.peer_id} is already on this hub")
            self._members[transport.peer_id] = transport

    def leave(self, transport: InprocTransport) -> None:
        with self._lock:
            if self._members.get(transport.peer_id) is transport:
                del self._members[transport.peer_id]

    def deliver(self, src: int, dst: int, frames: list) -> bool:
        """Hand copies of `frames` to `dst`; False if `dst` is not on the hub (message lost)."""
        with self._lock:
            target = self._members.get(dst)
        if target is None:
            return False
        target._deliver([bytes(f) for f in frames], src)  # no lock held: the receiver may answer at once
        return True


class InprocTransport(Transport):
    """Talks to the other `limits.known_senders` on `hub`."""

    def __init__(self, peer_id: int, hub: InprocHub, limits: WireLimits, link_policy: LinkPolicy | None = None,
                 **bounds):
        """`bounds`: the mailbox's and the norm guard's (`Transport`)."""
        super().__init__(peer_id, limits.known_senders, limits, link_policy=link_policy, **bounds)
        self.hub = hub
        self._held = Holdback()
        self._held_cond = threading.Condition(threading.Lock())
        self._held_closed = False
        self._releaser: threading.Thread | None = None

    def start(self) -> None:
        self.hub.join(self)

    def _send_frames(self, dst: int, frames: list, nbytes: int) -> None:
        release = self.link_policy.release_at(dst, nbytes, time.monotonic())
        if release is None:
            self._hand_over(dst, frames, nbytes)
            return
        with self._held_cond:
            if self._held_closed:  # a send racing close()
                self._count(dst, send_failed=1)
                return
            self._held.push(release, (dst, frames, nbytes))
            if self._releaser is None:
                self._releaser = threading.Thread(target=self._release_loop, name=f"dlion-shaper-{self.peer_id}",
                                                  daemon=True)
                self._releaser.start()
            self._held_cond.notify()

    def _hand_over(self, dst: int, frames: list, nbytes: int) -> None:
        if self.hub.deliver(self.peer_id, dst, frames):
            self._count(dst, msgs_sent=1, bytes_sent=nbytes)
        else:
            self._count(dst, send_failed=1)

    def _release_loop(self) -> None:
        """Deliver held messages when due, without holding the lock: a receiver may answer at once."""
        while True:
            with self._held_cond:
                while not (due := self._held.pop_due(time.monotonic())):
                    if self._held_closed:
                        return
                    release = self._held.next_release()
                    self._held_cond.wait(None if release is None else release - time.monotonic())
            for dst, frames, nbytes in due:
                self._hand_over(dst, frames, nbytes)

    def _shutdown(self, bye: list, nbytes: int) -> None:
        with self._held_cond:
            self._held_closed = True
            lost = self._held.drain()
            self._held_cond.notify()
        for dst, _, _ in lost:
            self._count(dst, send_failed=1)
        if self._releaser is not None:
            self._releaser.join()
        for p in sorted(self.peers):  # bye bypasses shaping
            self._hand_over(p, bye, nbytes)
        self.hub.leave(self)
