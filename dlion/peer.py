"""The peer: one training loop per micro-cloud, composing the stages on flat vectors.

One iteration: the batching stage picks this peer's batch size, the trainer computes a flat gradient (through the
step clock; the batching stage learns how long that took), the exchange stage combines it with the in-neighbours'
gradients for the round, the trainer applies the result, the gossip stage mixes the parameters with the
in-neighbours' over the round's graph, and the knowledge stage may merge a better peer's parameters. Run control
(`dlion.control`) decides when to stop and runs the evaluation protocol; progress events are `dlion.progress`'s.
The loop knows neither TensorFlow (the trainer does) nor sockets (the transport does); `dlion.wiring` builds it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from dlion import checkpoint, messages
from dlion.progress import traffic

REJOIN_WAIT_S = 10.0  # how long a restarted peer looks out for the parameters it asked for
KNOCK_EVERY_S = 1.0   # how often a peer says hello to peers that departed without a bye


class Peer:
    """One peer process's loop over its wired parts (`dlion.wiring.build`)."""

    def __init__(self, cfg, ctx, local, trainer, sampler, stages, clock, control, progress, log, out_dir,
                 resumed: dict | None = None):
        """`resumed`: the checkpoint (dlion.checkpoint.load) this peer continues from, already in its trainer."""
        self.cfg, self.ctx, self.local, self.trainer, self.sampler = cfg, ctx, local, trainer, sampler
        self.out_dir, self.resumed = out_dir, resumed
        self.batching, self.exchange = stages.batching, stages.exchange
        self.gossip, self.knowledge = stages.gossip, stages.knowledge
        self.clock, self.control, self.progress, self.log = clock, control, progress, log
        self.transport = ctx.transport
        self._answered: dict[int, int] = {}  # peer -> round of the last rejoin request answered
        self._awaiting: tuple | None = None  # a rejoining peer's request: (source, round, when asked)
        self._next_knock = 0.0
        self._start = resumed["iteration"] if resumed else 0

    def run(self) -> dict:
        """Train until a stop condition, evaluate on the full test set, say goodbye. Returns the final event."""
        self.transport.start()
        barrier_start = time.monotonic()
        reachable = self.transport.wait_for_peers(self.cfg.transport.startup_timeout_s)
        spec = self.cfg.peer(self.ctx.peer_id)
        self.log.emit("start", pid=os.getpid(), cores=spec.cores, threads=spec.tf_threads,
                      num_params=self.trainer.num_params, train_samples=len(self.local.train_idx),
                      barrier_s=round(time.monotonic() - barrier_start, 3), reachable=sorted(reachable),
                      neighbours=list(self.ctx.topology.destinations(self.ctx.peer_id)), emulation=self.clock.method,
                      resumed_from=self.resumed["iteration"] if self.resumed else None)
        self._start = self._rejoin(self._start, margin=self.cfg.evaluation.every_iterations)
        self.clock.start()
        try:
            reason, iteration = self._train()
            final = self._finish(reason, iteration)
        finally:
            self.clock.close()
            self.transport.close()
            self.log.close()
        return final

    def _rejoin(self, iteration: int, margin: int) -> int:
        """The round to go on from. A peer that fell more than `margin` rounds behind the others (restarted while
        they trained, or frozen and woken up) re-enters at once at their round, and asks the peer furthest ahead for
        its parameters (a `rejoin` message); they replace its own when they arrive (`_take_parameters`), so nobody
        waits for it meanwhile."""
        ahead, source = self._furthest_ahead()
        if ahead <= iteration + margin or self._awaiting:
            return iteration
        at = max(ahead, self.transport.mailbox.newest_round())
        self.transport.mailbox.advance(at)
        self.transport.send(source, messages.REJOIN, at)
        self._awaiting = (source, at, time.monotonic())
        self.log.emit("rejoin", at=at, was_at=iteration, asked=source)
        return at

    def _furthest_ahead(self) -> tuple[int, int | None]:
        """The highest round a live peer is known to be at (its latest hello says, or its newest message is of),
        and that peer."""
        newest = self.transport.mailbox.newest_rounds()
        best = (0, None)
        for p in self.ctx.live(self.ctx.others):
            hello = self.transport.mailbox.latest(messages.HELLO, p)
            at = max(newest.get(p, 0), hello.meta["at"] if hello is not None else 0)
            if at > best[0]:
                best = (at, p)
        return best

    def _knock(self) -> None:
        """Say hello, once in a while, to peers that departed without a bye: after a freeze (ours or theirs) the
        answers re-admit them and tell how far they got."""
        if (silent := self.transport.mailbox.departed_silently()) and time.monotonic() >= self._next_knock:
            self.transport.knock(silent)
            self._next_knock = time.monotonic() + KNOCK_EVERY_S

    def _take_parameters(self, iteration: int) -> None:
        """The parameters a rejoining peer asked for, taken when they arrive (or given up after REJOIN_WAIT_S)."""
        source, round_, asked = self._awaiting
        msg = self.transport.mailbox.latest(messages.MODEL, source)
        waited = time.monotonic() - asked
        if msg is None or msg.round != round_:
            if waited > REJOIN_WAIT_S:
                self._awaiting = None
                self.log.emit("rejoin_params", it=iteration, source=source, taken=False, wait_s=round(waited, 3))
            return
        self._awaiting = None
        own = self.trainer.get_params()
        if getattr(msg.tensors["x"], "shape", None) != own.shape:
            self.transport.reject(msg, "shape", f"expected parameters of shape {own.shape}")
            return
        self.trainer.set_params(msg.tensors["x"])
        # sent just before the model on the same link, so here by now if it was sent at all
        state = self.transport.mailbox.latest(messages.OPTIMIZER, source)
        with_optimizer = state is not None and state.round == round_
        if with_optimizer:
            try:
                self.trainer.set_optimizer_vector(state.tensors["o"])
            except ValueError as e:
                self.transport.reject(state, "shape", str(e))
                with_optimizer = False
        self.log.emit("rejoin_params", it=iteration, source=source, taken=True, optimizer=with_optimizer,
                      wait_s=round(waited, 3))

    def _answer_rejoins(self) -> None:
        """Send a peer that rejoins and asks for them the parameters to continue from, and the optimizer state
        before them (unless it is larger than a message may be)."""
        for p in self.ctx.live(self.ctx.others):
            msg = self.transport.mailbox.latest(messages.REJOIN, p)
            if msg is not None and self._answered.get(p) != msg.round:
                self._answered[p] = msg.round
                try:
                    self.transport.send(p, messages.OPTIMIZER, msg.round, {"o": self.trainer.optimizer_vector()})
                except ValueError:  # an optimizer with more state than a message may carry: the parameters alone
                    pass
                self.transport.send(p, messages.MODEL, msg.round, {"x": self.trainer.get_params()})

    def _train(self) -> tuple[str, int]:
        iteration, every = self._start, self.cfg.output.checkpoint_every
        if self.resumed:
            self.progress.samples = self.resumed["samples"]
            self.control.start(self.resumed["train_s"], self.resumed["eval_s"])
        else:
            self.control.start()
        while not (reason := self.control.stop_reason(iteration)):
            self._knock()
            iteration = self._rejoin(iteration, margin=2 * self.cfg.evaluation.every_iterations)
            self._answer_rejoins()
            if self._awaiting:
                self._take_parameters(iteration)
            batch = self.batching.batch_size(iteration)
            loss, grads, compute_s = self._gradients(batch)
            self.batching.observe(iteration, batch, compute_s)  # may report its rate: before this round's gradients
            exchanged = self.exchange.exchange(iteration, grads, batch, compute_s)
            self.trainer.apply(exchanged.grads)
            mixed = self.gossip.mix(iteration, self.ctx.model)
            iteration += 1
            if transfer := self.knowledge.step(iteration):
                self.log.emit("transfer", it=iteration, **transfer)
            self.progress.add(iteration, batch, loss, compute_s, exchanged, mixed, self.control.elapsed)
            if reason := self.control.after(iteration):
                break
            if every and iteration % every == 0:
                checkpoint.save(self.out_dir, self.ctx.peer_id, iteration, self.trainer.get_params(),
                                self.trainer.optimizer_state(), self.control.elapsed, self.control.eval_s,
                                self.progress.samples)
        return reason, iteration

    def _gradients(self, batch: int):
        """(loss, flat gradient, compute time) of this peer's next batch, paced by the step clock."""
        idx = self.sampler.next(batch)
        x, y = self.local.dataset.x_train[idx], self.local.dataset.y_train[idx]
        start = time.monotonic()
        with self.clock.step():
            loss, grads = self.trainer.gradients(x, y)
        return loss, grads, time.monotonic() - start

    def _finish(self, reason: str, iteration: int) -> dict:
        train_s, samples = self.control.elapsed, self.progress.samples
        loss, acc = self.trainer.evaluate(self.local.dataset.x_test, self.local.dataset.y_test)
        model_path = Path(self.out_dir) / f"peer-{self.ctx.peer_id}.keras"
        self.trainer.save(model_path)
        return self.log.emit("final", stop_reason=reason, it=iteration, samples=samples, model=str(model_path),
                             train_s=round(train_s, 3), samples_per_s=round(samples / max(train_s, 1e-9), 2),
                             acc=round(float(acc), 5), loss=round(float(loss), 5), **traffic(self.transport),
                             bytes_by_kind=self.transport.bytes_by_kind(), rejected=self.transport.rejections(),
                             links={str(k): v.as_dict() for k, v in self.transport.stats().items()})
