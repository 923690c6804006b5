"""Online bandwidth of one inbound link, from the messages that cross it.

Every message carries its sender's handover time (`sent_at`, wall clock) and gets its arrival time here. A message's
serialization on the link starts when it was handed over plus the link's base delay, or when the previous message
finished arriving if the link was still busy with it, so
    transfer = received_at - max(sent_at + base_delay, previous arrival)
and a large message gives a rate sample `bits / transfer`, smoothed into the estimate. The base delay (propagation,
plus any clock offset between the two hosts, which cancels out) is the smallest delay of recent small messages.
Counting from the previous arrival keeps the estimate right when the sender outruns the link (a backlog is not
mistaken for a slow link), and the rate is that of the whole path, receiver's CPU included.
"""
from __future__ import annotations

from collections import deque

from dlion.smoothing import Ema

SMALL_BYTES = 4096        # messages whose delay is mostly the link's base delay
MIN_SAMPLE_BYTES = 16384  # messages long enough on the wire to measure a rate
DELAY_WINDOW = 16         # small messages over which the base delay is the minimum
MIN_TRANSFER_S = 1e-4


class LinkEstimator:
    """Bandwidth estimate (bits/s) of one directed link, at its receiving end."""

    def __init__(self, smoothing: float = 0.5):
        self._bps = Ema(smoothing)
        self.samples = 0
        self._delays: deque[float] = deque(maxlen=DELAY_WINDOW)
        self._last_arrival = float("-inf")

    @property
    def bps(self) -> float | None:
        return self._bps.value

    @property
    def base_delay(self) -> float:
        return min(self._delays) if self._delays else 0.0

    def observe(self, nbytes: int, sent_at: float, received_at: float) -> None:
        """Fold in one message that was handed over at `sent_at` and had fully arrived at `received_at`."""
        if nbytes <= SMALL_BYTES:
            self._delays.append(received_at - sent_at)
        elif nbytes >= MIN_SAMPLE_BYTES and self._delays:
            start = max(sent_at + self.base_delay, self._last_arrival)
            self._bps.update(nbytes * 8 / max(received_at - start, MIN_TRANSFER_S))
            self.samples += 1
        self._last_arrival = max(self._last_arrival, received_at)
