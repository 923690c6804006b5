"""The peer: one training loop per micro-cloud, composing the stages on flat vectors.

One iteration (a round): the batching stage picks this peer's batch size, the round's work (`dlion.rounds`) computes
a flat gradient, or takes `rounds.local_steps` optimizer steps and yields the change of parameters (through the step
clock; the batching stage learns how long the peer was busy), the exchange stage combines it with the in-neighbours'
updates for the round, the round's work applies the result, the gossip stage mixes the parameters with the
in-neighbours' over the round's graph, and the knowledge stage may merge a better peer's parameters. Run control
(`dlion.control`) decides when to stop and runs the evaluation protocol; `dlion.rejoin` brings a peer that fell far
behind (restarted, or frozen) back to the others' round and state; progress events are `dlion.progress`'s.
The loop knows neither TensorFlow (the trainer does) nor sockets (the transport does); `dlion.wiring` builds it.
It times everything on the stages' clock (`StageContext.clock`): the host's, or a simulation's virtual one.
"""
from __future__ import annotations

import os
from pathlib import Path

from dlion import checkpoint
from dlion.classifier import ClassifierRefit
from dlion.consensus import FinalAverage
from dlion.progress import traffic
from dlion.rejoin import Rejoin
from dlion.replica import Replicas
from dlion.rounds import OuterStep, RoundWork, update_weight



class Peer:
    """One peer process's loop over its wired parts (`dlion.wiring.build`)."""

    def __init__(self, cfg, ctx, local, trainer, sampler, stages, clock, control, progress, log, out_dir,
                 resumed: dict | None = None, refit: ClassifierRefit | None = None):
        """`resumed`: the checkpoint (dlion.checkpoint.load) this peer continues from, already in its trainer;
        `refit`: the classifier refit to run after the final average (`rounds.classifier_refit`), if any."""
        self.cfg, self.ctx, self.local, self.trainer, self.sampler = cfg, ctx, local, trainer, sampler
        self.out_dir, self.resumed = out_dir, resumed
        self.batching, self.exchange = stages.batching, stages.exchange
        self.gossip, self.knowledge = stages.gossip, stages.knowledge
        self.clock, self.control, self.progress, self.log = clock, control, progress, log
        self.transport = ctx.transport
        rounds = cfg.rounds
        self.work = RoundWork(trainer, self._gradients, rounds.local_steps,
                              OuterStep(rounds.outer_learning_rate, rounds.outer_momentum), rounds.min_step_batch,
                              rounds.drift_correction)
        alone = control.lag is None  # trains alone: nobody's state to take, nobody to keep its replicas
        apart = control.lag == 0 and cfg.strategies.gossip.kind == "none"  # models that never mix again
        self.replicas = Replicas(cfg.replicas, ctx, trainer, on=not alone)
        self.rejoin = Rejoin(ctx, trainer, log, max(control.every, (control.lag or 0) + 1), catch_up=not alone,
                             elapsed=lambda: control.elapsed, replicas=self.replicas,
                             take_weight=self.gossip.take_weight, resync=apart,
                             frozen_after_s=cfg.transport.heartbeat_timeout_s if cfg.transport.heartbeat_s else None)
        control.idle = self.rejoin.answer  # while it waits for the others' figures, it answers rejoin requests
        self._start = self._round = resumed["iteration"] if resumed else 0
        self.final_average = (FinalAverage(ctx, rounds.final_average_timeout_s)
                              if rounds.final_average and not alone else None)
        self.refit = refit
        self._weight = 1.0  # the push-sum weight after the last round's mixing (1 without push-sum)

    def run(self, after_training=lambda: None) -> dict:
        """Train until a stop condition, call `after_training()`, evaluate on the full test set, say goodbye. Returns
        the final event."""
        self.transport.start()
        barrier_start = self.ctx.clock()
        reachable = self.transport.wait_for_peers(self.cfg.transport.startup_timeout_s)
        spec = self.cfg.peer(self.ctx.peer_id)
        self.log.emit("start", pid=os.getpid(), cores=spec.cores, threads=spec.tf_threads,
                      expected_rate=round(self.transport.expected_rate, 1), num_params=self.trainer.num_params,
                      train_samples=len(self.local.train_idx),
                      barrier_s=round(self.ctx.clock() - barrier_start, 3), reachable=sorted(reachable),
                      neighbours=list(self.ctx.topology.destinations(self.ctx.peer_id)), emulation=self.clock.method,
                      resumed_from=self.resumed["iteration"] if self.resumed else None)
        self._start = self.rejoin.start(self._start)
        self.clock.start()
        try:
            reason, iteration = self._train()
            after_training()
            if self.final_average and reason != "signal":  # stopped by a signal: the others may not be averaging
                self.log.emit("average", it=iteration, **self.final_average.run(iteration, self._weight))
            if self.refit and reason != "signal":
                self.log.emit("refit", it=iteration, **self.refit.run(iteration))
            final = self._finish(reason, iteration)
        finally:
            self.clock.close()
            self.transport.close()
            self.log.close()
        return final

    def _train(self) -> tuple[str, int]:
        iteration, every = self._start, self.cfg.output.checkpoint_every
        if self.resumed:
            self.progress.samples = self.resumed["samples"]
            self.control.start(self.resumed["train_s"], self.resumed["eval_s"])
        elif self.rejoin.train_s is not None:  # restarted and rejoined: on the others' clock
            self.control.start(self.rejoin.train_s)
        else:
            self.control.start()
        self.transport.hold(self.cfg.rounds.one_message)  # one message per link and round (`transport.outbox`)
        try:
            return self._rounds(iteration, every)
        finally:
            self.transport.hold(False)

    def _rounds(self, iteration: int, every: int) -> tuple[str, int]:
        steps, round_work_s = self.work.local_steps, 0.0
        while not (reason := self.control.stop_reason(iteration)):
            iteration = self._round = self.rejoin.step(iteration)
            batch = self.batching.batch_size(iteration)
            began = self.ctx.clock()
            loss, update, compute_s = self.work.compute(batch)
            # the batching stage's rate is of the peer's busy time per step: its steps and its share of the round's
            # own work (measured last round), so that rounds take the same time on every peer, waits left out; it
            # may report the rate: before this round's update
            self.batching.observe(iteration, batch, (compute_s + round_work_s) / steps)
            exchanged = self.exchange.exchange(iteration, update, update_weight(
                self.cfg.rounds.update_weights, batch, self.cfg.training.global_batch, len(self.ctx.peer_ids)), compute_s)
            self.work.apply(exchanged.grads)
            mixed = self.gossip.mix(iteration, self.ctx.model)
            self._weight = mixed.weight
            self.replicas.step(iteration, mixed.weight)
            round_work_s = max(0.0, self.ctx.clock() - began - compute_s - exchanged.wait_s - mixed.wait_s)
            iteration += 1
            if transfer := self.knowledge.step(iteration):
                self.log.emit("transfer", it=iteration, **transfer)
            self.progress.add(iteration, batch, loss, compute_s, exchanged, mixed, self.control.elapsed,
                              due=self.rejoin.at is not None and iteration == self.rejoin.at + 1, steps=steps)
            reason = self.control.after(iteration)
            self.transport.end_round()
            if reason:
                break
            if every and iteration % every == 0:
                checkpoint.save(self.out_dir, self.ctx.peer_id, iteration, self.trainer.get_params(),
                                self.trainer.optimizer_state(), self.control.elapsed, self.control.eval_s,
                                self.progress.samples)
        return reason, iteration

    def _gradients(self, batch: int):
        """(loss, flat gradient, compute time) of this peer's next batch, paced by the step clock."""
        self.rejoin.answer_within(self._round)  # a restarted peer asking for a state need not wait for the round's end
        idx = self.sampler.next(batch)
        x, y = self.local.dataset.x_train[idx], self.local.dataset.y_train[idx]
        start = self.ctx.clock()
        with self.clock.step():
            loss, grads = self.trainer.gradients(x, y)
        return loss, grads, self.ctx.clock() - start

    def _finish(self, reason: str, iteration: int) -> dict:
        train_s, samples = self.control.elapsed, self.progress.samples
        loss, acc = self.trainer.evaluate(self.local.dataset.x_test, self.local.dataset.y_test)
        model_path = Path(self.out_dir) / f"peer-{self.ctx.peer_id}.keras"
        self.trainer.save(model_path)
        return self.log.emit("final", stop_reason=reason, it=iteration, steps=iteration * self.work.local_steps,
                             samples=samples, model=str(model_path),
                             train_s=round(train_s, 3), samples_per_s=round(samples / max(train_s, 1e-9), 2),
                             acc=round(float(acc), 5), loss=round(float(loss), 5), **traffic(self.transport),
                             bytes_by_kind=self.transport.bytes_by_kind(), rejected=self.transport.rejections(),
                             links={str(k): v.as_dict() for k, v in self.transport.stats().items()})
