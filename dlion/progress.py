"""Progress reporting: a peer's `iter` events, each summing up the iterations since the one before.

What an event holds: the batch and the whole allocation, the measured compute rate, per outgoing link the exchange's
budget, the gossip's weight and entries sent, averages of loss, compute and wait times and of a round's length
(`round_s`, on the clock `samples_per_s` divides by: evaluation pauses included), traffic counters, CPU and memory.
The loop hands over each iteration's results (`add`); every `log_every` iterations an event is written, and each
scheduled change the step clock applied is written as a `change` event with the iteration it came in.
"""
from __future__ import annotations

import numpy as np

from dlion.stages import ExchangeResult, GossipResult


def traffic(transport) -> dict:
    """Bytes and messages over all links so far."""
    stats = transport.stats().values()
    return {"bytes_sent": sum(s.bytes_sent for s in stats), "bytes_received": sum(s.bytes_received for s in stats),
            "messages_dropped": sum(s.dropped for s in stats), "messages_late": sum(s.late for s in stats)}


class ProgressReport:
    """Collects per-iteration figures and writes an `iter` event every `log_every` iterations."""

    def __init__(self, log, log_every: int, transport, batching, clock, default_cores: float):
        self.log = log
        self.log_every = log_every
        self.transport = transport
        self.batching = batching
        self.clock = clock
        self.default_cores = default_cores
        self.rows: list[tuple] = []
        self.samples = 0
        self._elapsed = None  # the run's clock (`elapsed`, evaluation included) at the previous iteration

    def add(self, iteration: int, batch: int, loss: float, compute_s: float, exchanged: ExchangeResult,
            mixed: GossipResult, elapsed: float, due: bool = False, steps: int = 1) -> None:
        """Record iteration `iteration` (counted from 1: a round of `steps` optimizer steps on batches of `batch`)
        and write the event when due (every `log_every` iterations, or when the caller says so)."""
        self.samples += batch * steps
        round_s = np.nan if self._elapsed is None else elapsed - self._elapsed
        self._elapsed = elapsed
        self.rows.append((loss, compute_s, exchanged.wait_s + mixed.wait_s, exchanged.received, batch * steps,
                          round_s))
        for change in self.clock.changes():
            self.log.emit("change", it=iteration, **change)
        if iteration % self.log_every and not due:
            return
        gossip = {"gossip": {"w": round(mixed.weight, 4), "received": mixed.received,
                             "sent": {str(d): k for d, k in mixed.sent.items()}}} if mixed.params is not None else {}
        self.log.emit("iter", it=iteration, steps=iteration * steps, batch=batch, samples=self.samples,
                      cores=self.clock.cores or self.default_cores,
                      samples_per_s=round(self.samples / max(elapsed, 1e-9), 2),
                      alloc={str(p): b for p, b in self.batching.sizes.items()},
                      rate=None if self.batching.rate is None else round(self.batching.rate, 1),
                      links={str(d): v for d, v in exchanged.budgets.items()}, **gossip,
                      **self._flush(), **traffic(self.transport), **self.log.resources())

    def _flush(self) -> dict:
        rows = np.array(self.rows, dtype=np.float64)
        loss, compute_s, wait_s, received, batch = rows[:, :5].mean(axis=0)
        round_s = np.nanmean(rows[:, 5]) if not np.isnan(rows[:, 5]).all() else None
        self.rows.clear()
        return {"loss": round(float(loss), 5), "compute_s": round(float(compute_s), 5),
                "wait_s": round(float(wait_s), 5), "max_wait_s": round(float(rows[:, 2].max()), 5),
                "round_s": None if round_s is None else round(float(round_s), 5),
                "received": round(float(received), 2),
                "compute_sps": round(float(batch / max(compute_s, 1e-9)), 1)}
