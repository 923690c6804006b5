"""An exponential moving average: the one smoothing rule of measured rates and times (compute rates for batching,
compute times for exchange budgets, link bandwidths in the transport)."""
from __future__ import annotations


class Ema:
    """`value` follows the samples given to `update`, the newest weighted by `smoothing`; None before the first."""

    def __init__(self, smoothing: float, value: float | None = None):
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.smoothing = smoothing
        self.value = value

    def update(self, sample: float) -> float:
        a = self.smoothing
        self.value = sample if self.value is None else a * sample + (1 - a) * self.value
        return self.value
