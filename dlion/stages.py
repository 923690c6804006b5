"""The four stages of a peer's round, each behind one protocol, all built from one context.

A round is batching -> gradients -> exchange -> apply -> gossip -> knowledge (`dlion.peer`). Every strategy of every
stage is constructed as `Strategy(params, ctx)`: its own validated `Params` (defaults and checks next to it) and the
`StageContext` it shares with the others. Every stage has a null strategy (`fixed`, `none`), so the loop never asks
whether a stage is on. Strategies work on flat numpy vectors and know neither TensorFlow nor sockets: the model is
reached through `ModelAccess`, the network through the transport's `send`, `mailbox` and `reject`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import numpy as np


@dataclass(frozen=True)
class ModelAccess:
    """What a stage may do with the model: read and overwrite its flat parameters, and score it (loss on this peer's
    held-out data; only when a stage asked for a holdout, see `Requirements`)."""

    get: Callable[[], np.ndarray]
    set: Callable[[np.ndarray], None]
    score: Callable[[], float]


@dataclass(frozen=True)
class Requirements:
    """What a strategy needs from the peer's data and trainer: a held-out fraction of its training data (scores),
    and a loss on logits shifted by its label frequencies (logit adjustment for skewed data)."""

    holdout: float = 0.0
    label_prior: bool = False

    def __or__(self, other: Requirements) -> Requirements:
        return Requirements(max(self.holdout, other.holdout), self.label_prior or other.label_prior)


@dataclass
class StageContext:
    """Everything a stage is built from: who it is and who the others are, the transport, the round graph, the
    configured capacities and link rates, the model, and the clock deadlines are measured on."""

    peer_id: int
    peer_ids: tuple[int, ...]
    transport: object
    topology: object
    global_batch: int
    cores: dict[int, float]
    link_bandwidths: dict[int, float] = field(default_factory=dict)  # configured rate of each outgoing link (bit/s)
    model: ModelAccess | None = None
    inbound_bandwidths: dict[int, float] = field(default_factory=dict)  # configured rate of each incoming link
    clock: Callable[[], float] = time.monotonic

    @property
    def others(self) -> tuple[int, ...]:
        return tuple(p for p in self.peer_ids if p != self.peer_id)

    def live(self, peers: Iterable[int]) -> list[int]:
        """`peers` without those that left (said bye, or their connection dropped)."""
        departed = self.transport.mailbox.departed
        return [p for p in peers if p not in departed]


@dataclass(frozen=True)
class ExchangeResult:
    grads: np.ndarray          # the combined gradient to apply
    received: int              # neighbour gradients combined this round
    wait_s: float              # time spent waiting for neighbours
    budgets: dict = field(default_factory=dict)  # per outgoing link: entries sent ("k"), rate estimate ("bps")


@dataclass(frozen=True)
class GossipResult:
    weight: float             # this peer's push-sum weight after the round
    received: int             # in-neighbour messages folded in this step (skipped rounds' included)
    wait_s: float             # time spent waiting for them
    sent: dict = field(default_factory=dict)  # per out-neighbour: entries of the public value sent
    params: np.ndarray | None = None  # the de-biased parameters z = x / w to continue from (None: unchanged)


class Batching(Protocol):
    sizes: dict[int, int]      # the current allocation of the global batch
    rate: float | None         # this peer's measured compute rate (samples/s), if it measures one

    def batch_size(self, round_: int) -> int: ...

    def observe(self, round_: int, batch: int, compute_s: float) -> None: ...


class Exchange(Protocol):
    def exchange(self, round_: int, grads: np.ndarray, weight: float, compute_s: float) -> ExchangeResult: ...


class Gossip(Protocol):
    def mix(self, round_: int, model: ModelAccess) -> GossipResult: ...

    def take_weight(self, weight: float) -> None:
        """Hold this push-sum weight from now on (a restarted peer's own share, from its replica); a gossip without
        weights has nothing to take."""


class Knowledge(Protocol):
    def step(self, round_: int) -> dict | None: ...


class Strategy:
    """Base of every stage strategy: its parameters (none here) and its requirements (none here)."""

    @dataclass(frozen=True)
    class Params:
        pass

    @classmethod
    def requires(cls, params) -> Requirements:
        return Requirements()
