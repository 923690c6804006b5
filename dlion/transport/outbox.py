"""The outbox: a round's messages to each peer, held back and sent together, one message per link.

A round's stages each send their own message (the gradient part, the gossip part, a replica slice, a report, an
evaluation figure); each would cost the link a latency of its own. While the peer's loop holds its messages
(`Transport.hold`), those of the kinds a round's stages send (`messages.BUNDLED`) wait here, per destination, and
leave as one bundle (`wire.encode_bundle`) per link: at the end of the round, or, for the links to peers that may be
waiting for them, as soon as the peer is about to wait for anyone (the mailbox flushes those first: nobody may wait for
a message this peer still holds; `Mailbox._pause` says which). A bundle is stamped when it leaves, so the receiver
measures the link by it, and never exceeds the largest message receivers accept: more parts than fit go as a second
bundle.
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

from . import wire

BUNDLE_HEADER_BYTES = 64  # at most, for a bundle header of a few parts (msgpack: counts, a time, a rate)


class Outbox:
    """Thread-safe: `hold` and `flush` may come from any thread; `send(dst, parts)` sends one bundle of encoded
    messages (their frames) to `dst`."""

    def __init__(self, send: Callable[[int, list[Sequence]], None], max_message_bytes: int):
        self._send = send
        self._max_bytes = max_message_bytes
        self._held: dict[int, list[tuple[Sequence, int]]] = {}
        self._lock = threading.Lock()

    def destinations(self) -> set[int]:
        """The peers messages are held for."""
        with self._lock:
            return set(self._held)

    def hold(self, dst: int, frames: Sequence, nbytes: int) -> None:
        with self._lock:
            self._held.setdefault(dst, []).append((frames, nbytes))

    def flush(self, only: set[int] | None = None) -> None:
        """Send everything held (for the destinations `only`, if given): per destination, in the order held, as few
        bundles as the size limit allows."""
        with self._lock:
            if only is None:
                held, self._held = self._held, {}
            else:
                held = {dst: self._held.pop(dst) for dst in list(self._held) if dst in only}
        for dst, messages in held.items():
            for parts in self._batches(messages):
                self._send(dst, parts)

    def _batches(self, messages: list[tuple[Sequence, int]]) -> list[list[Sequence]]:
        batches, batch, size = [], [], BUNDLE_HEADER_BYTES
        for frames, nbytes in messages:
            if batch and (size + nbytes > self._max_bytes or len(batch) == wire.MAX_BUNDLE_PARTS):
                batches.append(batch)
                batch, size = [], BUNDLE_HEADER_BYTES
            batch.append(frames)
            size += nbytes
        return [*batches, batch] if batch else batches
