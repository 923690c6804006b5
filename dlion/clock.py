"""The step clock: the hook around each gradient computation through which a peer's compute is paced.

A peer of a real micro-cloud computes at the speed of its machine: `Unpaced`. An emulation attaches a clock that
makes each step take as long as it would on the machine the peer stands for (`dlion.emulate.fallback`), applying the
run's scheduled changes as training time passes; the training loop only calls the protocol below.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Protocol


class StepClock(Protocol):
    method: str             # the emulation method in force, for the start event ("none" without one)
    cores: float | None     # the compute capacity the peer is paced to now (None: its own machine's)

    def start(self) -> None:
        """Training starts: time 0 of the schedule."""

    def step(self) -> ContextManager[None]:
        """Around one gradient computation."""

    def changes(self) -> list[dict]:
        """Scheduled changes applied since the last call, as event fields."""

    def close(self) -> None:
        """Training ended: release whatever the clock holds."""


class Unpaced:
    """The null clock: steps take what they take."""

    method = "none"
    cores = None

    def start(self) -> None:
        pass

    def step(self) -> ContextManager[None]:
        return contextlib.nullcontext()

    def changes(self) -> list[dict]:
        return []

    def close(self) -> None:
        pass
