"""Ako's partial gradient exchange (Watcharapichat et al., SoCC 2016, "Ako: Decentralised Deep Learning with Partial
Gradient Exchange"): each link carries a fixed 1/p of the vector per round, every entry in turn.

The vector is split into `partitions` (p) contiguous parts of near-equal size. Each round, for each outgoing link of
the round's graph, the peer adds the round's vector to the link's accumulation and sends one partition of it, as a
sparse vector, and keeps the rest: the link's k-th message carries partition k mod p, so on the full mesh (every link
every round, Ako's setting) round t sends partition t mod p to everyone, and on a time-varying graph each link still
goes through every partition in turn. Every entry thus leaves every p of the link's rounds with everything accumulated
since it last left (exact error feedback), and a link's load is fixed, 1/p of the dense exchange's entries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlion.exchange.dense import RoundParams
from dlion.exchange.selective import Picker, SelectiveExchange
from dlion.schema import option, positive


class AkoExchange(SelectiveExchange):
    """Ako: per link, one of p contiguous partitions of the accumulated gradient per round, in turn."""

    @dataclass(frozen=True)
    class Params(RoundParams):
        partitions: int = option(4, check=positive,
                                 expect="a positive integer: the vector goes in this many contiguous parts, one per "
                                        "round on each link")

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        self.turns: dict[int, int] = {}  # the partition each link sends next

    def _picker(self, round_: int, grads: np.ndarray) -> Picker:
        return lambda dst, acc: self._next_partition(dst, acc.size)

    def _next_partition(self, dst: int, n: int) -> np.ndarray:
        p = self.params.partitions
        part = self.turns.get(dst, 0)
        self.turns[dst] = (part + 1) % p
        return np.arange(n * part // p, n * (part + 1) // p, dtype=np.uint32)
