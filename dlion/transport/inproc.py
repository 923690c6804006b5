"""In-process transport: same interface, same wire encoding and validation, no sockets.

Delivery is synchronous (in the sender's thread) and copies every frame, as TCP would, so tests are
deterministic and a receiver never aliases a sender's arrays.
"""
from __future__ import annotations

import threading

from .base import Transport
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

    def __init__(self, peer_id: int, hub: InprocHub, limits: WireLimits):
        super().__init__(peer_id, limits.known_senders, limits)
        self.hub = hub

    def start(self) -> None:
        self.hub.join(self)

    def _send_frames(self, dst: int, frames: list, nbytes: int) -> None:
        if self.hub.deliver(self.peer_id, dst, frames):
            self._count(dst, msgs_sent=1, bytes_sent=nbytes)
        else:
            self._count(dst, send_failed=1)

    def _shutdown(self, bye: list, nbytes: int) -> None:
        for p in sorted(self.peers):
            self._send_frames(p, bye, nbytes)
        self.hub.leave(self)
