"""Batching stage: how many samples of the fixed global batch each peer computes per iteration.

Every peer computes the same allocation from the config (and, for adaptive strategies, from the reports it received),
so no coordinator is needed. A peer's gradient is weighted by its share of the global batch when combined.
"""
from __future__ import annotations

from dataclasses import dataclass


def split_evenly(total: int, peer_ids) -> dict[int, int]:
    """`total` samples over the peers, as equal as integers allow; the remainder goes to the lowest ids."""
    ids = sorted(peer_ids)
    base, extra = divmod(total, len(ids))
    return {pid: base + (1 if i < extra else 0) for i, pid in enumerate(ids)}


class FixedBatching:
    """Equal shares of the global batch, fixed for the whole run (the BSP baseline)."""

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Params, peer_id: int, peer_ids, global_batch: int):
        self.peer_id = peer_id
        self.sizes = split_evenly(global_batch, peer_ids)

    def batch_size(self, iteration: int) -> int:
        return self.sizes[self.peer_id]


STRATEGIES = {"fixed": FixedBatching}
