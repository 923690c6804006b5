"""The peer: one training loop per micro-cloud, composing the stages on flat vectors.

One iteration: the batching stage picks this peer's batch size, the trainer computes a flat gradient (the batching
stage learns how long that took), the exchange stage combines it with the in-neighbours' gradients for the round, the
trainer applies the result, the gossip stage mixes the parameters with the in-neighbours' over the round's graph, and
the knowledge stage may merge a better peer's parameters. Every
`evaluation.every_iterations` the peer scores the fixed evaluation subset and shares the figure, so all peers see the
same mean accuracy and stop together at the target. The loop owns timing, stop conditions, metrics and shutdown; it
knows neither TensorFlow (the trainer does) nor sockets (the transport does).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from dlion import data as datamod
from dlion.batching import STRATEGIES as BATCHING
from dlion.config import Config
from dlion.emulate import fallback
from dlion.exchange import STRATEGIES as EXCHANGE
from dlion.gossip import STRATEGIES as GOSSIP
from dlion.knowledge import STRATEGIES as KNOWLEDGE
from dlion.knowledge import ModelAccess
from dlion.metrics import EventLog, peer_log_path
from dlion.transport import WireLimits, ZmqTransport

log = logging.getLogger("dlion.peer")

EVAL_KIND = "eval"
STOP_KIND = "stop"
HEADER_ALLOWANCE = 1 << 20  # bytes on top of the largest tensor payload
NUM_CLASSES = 10  # the datasets' (Fashion-MNIST and the synthetic set) and the trainer's default


def max_message_bytes(num_values: int) -> int:
    """Largest legitimate message: a sparse vector of every entry (uint32 index + float32 value) plus headers."""
    return 8 * num_values + HEADER_ALLOWANCE


def load_dataset(cfg: Config) -> datamod.Dataset:
    if cfg.training.dataset == "synthetic":
        return datamod.synthetic(seed=cfg.seed)
    return datamod.load_fashion_mnist(cfg.training.data_dir)


class Peer:
    """One peer process's state and loop. `transport` and `dataset` can be injected (tests, benchmarks)."""

    def __init__(self, cfg: Config, peer_id: int, out_dir: str | Path, *, transport=None, dataset=None,
                 stop_event: threading.Event | None = None):
        from dlion import trainer as trainer_mod  # TensorFlow is imported here, not at module load

        self.cfg = cfg
        self.id = peer_id
        self.spec = cfg.peer(peer_id)
        self.stop_event = stop_event or threading.Event()
        self.log = EventLog(peer_log_path(out_dir, peer_id), peer_id)
        tr = cfg.training
        trainer_mod.configure_threads(self.spec.tf_threads)
        self.data = dataset if dataset is not None else load_dataset(cfg)
        ids = sorted(cfg.peer_ids)
        parts = datamod.partition(self.data.y_train, len(ids), tr.partition.kind, seed=cfg.seed,
                                  alpha=tr.partition.alpha, fraction=tr.partition.fraction)
        stages = cfg.strategies
        holdout = getattr(stages.knowledge.params, "holdout", 0.0)
        self.train_idx, holdout_idx = datamod.holdout_split(parts[ids.index(peer_id)], holdout,
                                                            seed=cfg.seed * 31 + peer_id)
        prior = None  # skew compensation by logit adjustment: this peer's label frequencies (+1 each: none is 0)
        if getattr(stages.gossip.params, "skew_compensation", "none") == "logit-adjustment":
            prior = np.bincount(self.data.y_train[self.train_idx], minlength=NUM_CLASSES) + 1.0
        self.trainer = trainer_mod.Trainer(model=tr.model, optimizer=tr.optimizer, learning_rate=tr.learning_rate,
                                           seed=cfg.seed, momentum=tr.momentum, label_prior=prior)
        self.sampler = datamod.BatchSampler(self.train_idx, seed=cfg.seed * 7919 + peer_id + 1)
        self.eval_idx = datamod.eval_subset(len(self.data.y_test), cfg.evaluation.subset, seed=cfg.seed)
        self.others = tuple(i for i in ids if i != peer_id)
        if transport is None:
            limits = WireLimits(frozenset(ids), max_message_bytes(max(self.trainer.num_params,
                                                                      self.trainer.num_state)))
            transport = ZmqTransport(peer_id, {p.id: (p.address, p.port) for p in cfg.peers}, limits,
                                     sndhwm=cfg.transport.sndhwm, suspect_after=cfg.transport.suspect_after)
        self.transport = transport
        self.batching = BATCHING[stages.batching.kind](stages.batching.params, peer_id, ids, tr.global_batch,
                                                       transport, {p: cfg.cores(p) for p in ids})
        graph = cfg.graph()
        self.links = graph.links_of(peer_id)
        self.exchange = EXCHANGE[stages.exchange.kind](stages.exchange.params, peer_id, transport, graph,
                                                       {d: cfg.link(peer_id, d).bandwidth for d in self.links})
        # without gossip, skip the stage and with it a get/set round trip of the parameters every iteration
        self.gossip = (GOSSIP[stages.gossip.kind](stages.gossip.params, peer_id, transport, graph)
                       if stages.gossip.kind != "none" else None)
        x_hold, y_hold = self.data.x_train[holdout_idx], self.data.y_train[holdout_idx]
        model = ModelAccess(score=lambda: self.trainer.evaluate(x_hold, y_hold)[0], get=self.trainer.get_params,
                            set=self.trainer.set_params)
        self.knowledge = KNOWLEDGE[stages.knowledge.kind](stages.knowledge.params, peer_id, ids, transport, model)
        self.emulation = fallback.in_process(cfg, peer_id, transport, turns_dir=out_dir)

    # ---- the loop ---------------------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Train until a stop condition, evaluate on the full test set, say goodbye. Returns the final event."""
        self.transport.start()
        barrier_start = time.monotonic()
        reachable = self.transport.wait_for_peers(self.cfg.transport.startup_timeout_s)
        self.log.emit("start", pid=os.getpid(), cores=self.spec.cores, threads=self.spec.tf_threads,
                      num_params=self.trainer.num_params, train_samples=len(self.train_idx),
                      barrier_s=round(time.monotonic() - barrier_start, 3), reachable=sorted(reachable),
                      neighbours=list(self.links),
                      emulation=self.cfg.emulation.method if self.cfg.emulation.method != "auto" else "fallback")
        if self.emulation:
            self.emulation.start()
        try:
            reason, iteration, samples, train_s = self._train()
            final = self._finish(reason, iteration, samples, train_s)
        finally:
            if self.emulation:
                self.emulation.close()
            self.transport.close()
            self.log.close()
        return final

    def _train(self):
        cfg, tr = self.cfg, self.cfg.training
        start = time.monotonic()
        self._train_start, self._eval_s = start, 0.0
        iteration = samples = 0
        window = _Window()
        while True:
            elapsed = time.monotonic() - start
            reason = self._stop_reason(iteration, elapsed)
            if reason:
                break
            if self.emulation:
                for change in self.emulation.update(elapsed):
                    self.log.emit("change", it=iteration, **{k: v for k, v in vars(change).items() if v is not None})
            batch = self.batching.batch_size(iteration)
            idx = self.sampler.next(batch)
            t0 = time.monotonic()
            with self.emulation.step() if self.emulation else contextlib.nullcontext():
                loss, grads = self.trainer.gradients(self.data.x_train[idx], self.data.y_train[idx])
            compute_s = time.monotonic() - t0
            self.batching.observe(iteration, batch, compute_s)  # may report its rate: before this round's gradients
            result = self.exchange.exchange(iteration, grads, batch, compute_s)
            self.trainer.apply(result.grads)
            wait_s = result.wait_s
            if self.gossip:
                mixed = self.gossip.step(iteration, self.trainer.get_params())
                self.trainer.set_params(mixed.params)
                wait_s += mixed.wait_s
            iteration += 1
            samples += batch
            transfer = self.knowledge.step(iteration)
            if transfer:
                self.log.emit("transfer", it=iteration, **transfer)
            window.add(loss, compute_s, wait_s, result.received, batch)
            if iteration % cfg.output.log_every == 0:
                self.log.emit("iter", it=iteration, batch=batch, samples=samples,
                              cores=self.emulation.cores if self.emulation else self.spec.cores,
                              samples_per_s=round(samples / (time.monotonic() - start), 2),
                              alloc={str(p): b for p, b in self.batching.sizes.items()},
                              rate=None if self.batching.rate is None else round(self.batching.rate, 1),
                              links={str(d): v for d, v in result.links.items()},
                              **({"gossip": {"w": round(mixed.weight, 4), "received": mixed.received,
                                             "sent": {str(d): k for d, k in mixed.sent.items()}}}
                                 if self.gossip else {}),
                              **window.flush(), **self._traffic(), **self.log.resources())
            if iteration % cfg.evaluation.every_iterations == 0 and self._evaluate(iteration) and tr.stop_at_target:
                self._broadcast(STOP_KIND, iteration)
                reason = "target"
                break
        return reason, iteration, samples, time.monotonic() - start

    def _stop_reason(self, iteration: int, elapsed: float) -> str | None:
        tr = self.cfg.training
        if self.stop_event.is_set():
            return "signal"
        if tr.max_iterations is not None and iteration >= tr.max_iterations:
            return "max_iterations"
        if tr.max_seconds is not None and elapsed >= tr.max_seconds:
            return "max_seconds"
        if any(self.transport.mailbox.latest(STOP_KIND, p) is not None for p in self.others):
            return "target"
        return None

    def _evaluate(self, iteration: int) -> bool:
        """Score the evaluation subset, share it, and say whether the peers' mean reached the target."""
        began = time.monotonic()
        train_s = began - self._train_start - self._eval_s
        x, y = self.data.x_test[self.eval_idx], self.data.y_test[self.eval_idx]
        loss, acc = self.trainer.evaluate(x, y)
        self._broadcast(EVAL_KIND, iteration, {"acc": float(acc)})
        waiting_for = [p for p in self.others if p not in self.transport.mailbox.departed]
        deadline = time.monotonic() + self.cfg.evaluation.deadline_s
        # every peer evaluates at the same iteration counts, so only this round's figures are comparable
        got = self.transport.mailbox.take(EVAL_KIND, iteration, waiting_for, deadline)
        accs = [float(acc)] + [m.meta["acc"] for m in got.values() if isinstance(m.meta.get("acc"), (int, float))]
        mean = sum(accs) / len(accs)
        self._eval_s += time.monotonic() - began
        self.log.emit("eval", it=iteration, acc=round(float(acc), 5), loss=round(float(loss), 5),
                      mean_acc=round(mean, 5), peers_reported=len(accs), train_s=round(train_s, 3),
                      eval_s=round(self._eval_s, 3))
        target = self.cfg.training.target_accuracy
        return target is not None and len(got) == len(waiting_for) and mean >= target

    def _finish(self, reason: str, iteration: int, samples: int, train_s: float) -> dict:
        loss, acc = self.trainer.evaluate(self.data.x_test, self.data.y_test)
        return self.log.emit("final", stop_reason=reason, it=iteration, samples=samples,
                             train_s=round(train_s, 3), samples_per_s=round(samples / max(train_s, 1e-9), 2),
                             acc=round(float(acc), 5), loss=round(float(loss), 5), **self._traffic(),
                             bytes_by_kind=self.transport.bytes_by_kind(),
                             links={str(k): v.as_dict() for k, v in self.transport.stats().items()})

    # ---- helpers ----------------------------------------------------------------------------------------------------

    def _broadcast(self, kind: str, round_: int, meta: dict | None = None) -> None:
        for p in self.others:
            if p not in self.transport.mailbox.departed:
                self.transport.send(p, kind, round_, None, meta)

    def _traffic(self) -> dict:
        stats = self.transport.stats().values()
        return {"bytes_sent": sum(s.bytes_sent for s in stats),
                "bytes_received": sum(s.bytes_received for s in stats),
                "messages_dropped": sum(s.dropped for s in stats),
                "messages_late": sum(s.late for s in stats)}


class _Window:
    """Averages of per-iteration figures between two progress events."""

    def __init__(self):
        self.rows = []

    def add(self, loss, compute_s, wait_s, received, batch):
        self.rows.append((loss, compute_s, wait_s, received, batch))

    def flush(self) -> dict:
        rows = np.array(self.rows, dtype=np.float64)
        loss, compute_s, wait_s, received, batch = rows.mean(axis=0)
        self.rows.clear()
        return {"loss": round(float(loss), 5), "compute_s": round(float(compute_s), 5),
                "wait_s": round(float(wait_s), 5), "max_wait_s": round(float(rows[:, 2].max()), 5),
                "received": round(float(received), 2),
                "compute_sps": round(float(batch / max(compute_s, 1e-9)), 1)}


def run_peer(cfg: Config, peer_id: int, out_dir: str | Path) -> dict:
    """Run one peer in this process until it stops; SIGTERM and SIGINT end it cleanly after the current step."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("peer %d: signal %d, stopping", peer_id, signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return Peer(cfg, peer_id, out_dir, stop_event=stop).run()
