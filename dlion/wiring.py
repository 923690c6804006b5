"""Wiring one peer: its data, trainer, transport and stages, each made in one place (`_make_*`), then given to the
loop (`dlion.peer.Peer`). Emulation, where there is one, comes in from outside through the two hooks taken here: a
step clock (`dlion.clock`) and a link policy (`dlion.transport.base.LinkPolicy`).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlion import data as datamod
from dlion import checkpoint, hooks, security, sources
from dlion.classifier import ClassifierRefit
from dlion.clock import StepClock, Unpaced
from dlion.config import STAGE_REGISTRIES, Config
from dlion.schema import ConfigError
from dlion.control import RunControl
from dlion.metrics import EventLog, peer_log_path
from dlion.optimizers import training_options
from dlion.peer import Peer
from dlion.progress import ProgressReport
from dlion.rounds import step_batches
from dlion.stages import ModelAccess, Requirements, StageContext
from dlion.tensorboard import tensorboard_sinks
from dlion.transport import WireLimits, ZmqTransport

HEADER_ALLOWANCE = 1 << 20  # bytes on top of the largest tensor payload
VALIDATION_FRACTION = 0.1  # of a peer's own data, evaluated on where its source has no test set
WARM_UP_TIMED_STEPS = 3  # steps timed in the warm-up for the rate a peer expects before it trains


def max_message_bytes(num_values: int) -> int:
    """Largest legitimate message: a sparse vector of every entry (uint32 index + float32 value) plus headers."""
    return 8 * num_values + HEADER_ALLOWANCE


def load_dataset(cfg: Config, peer_id: int | None = None) -> datamod.Dataset:
    """What peer `peer_id` reads: its own source if it has one, else the shared one (None: the shared one). A source
    without a test set gets one: VALIDATION_FRACTION of its training samples, held out."""
    own = cfg.peer(peer_id).data if peer_id is not None else None
    if own is not None or cfg.training.data is not None:
        dataset = sources.load(own or cfg.training.data)
        return dataset if len(dataset.y_test) else datamod.with_validation(dataset, VALIDATION_FRACTION, cfg.seed)
    if cfg.training.dataset == "synthetic":
        return datamod.synthetic(seed=cfg.seed)
    return datamod.load_fashion_mnist(cfg.training.data_dir)


def shape_and_classes(cfg: Config, dataset: datamod.Dataset) -> tuple[tuple[int, ...], int]:
    """The model's input shape (the data's) and number of classes (training.num_classes, else the data's); a
    DataError if the data has labels beyond the configured classes."""
    shape, seen = sources.shape_and_classes(dataset)
    classes = cfg.training.num_classes or seen
    if seen > classes:
        raise datamod.DataError(f"the data has labels up to {seen - 1}, beyond training.num_classes {classes}")
    return shape, classes


def check_model(cfg: Config) -> list[str]:
    """`dlion validate`: load the data each peer reads here (a peer's own source on another host is skipped), build
    the model on its shape and say its size. Raises DataError, or ConfigError naming training.model."""
    from dlion.models import build_model  # TensorFlow
    seen, lines = {}, []
    for p in cfg.peers:
        source = p.data or cfg.training.data
        if p.data is not None and not hooks.is_hook(p.data) and not Path(p.data).exists():
            lines.append(f"peers[{cfg.peers.index(p)}].data: {p.data} is not on this host; not checked here")
            continue
        if source in seen:
            continue
        shape, classes = shape_and_classes(cfg, load_dataset(cfg, p.id))
        seen[source] = (shape, classes)
        if len(set(seen.values())) > 1:
            raise datamod.DataError(f"the peers' data differ in shape or classes: {sorted(set(seen.values()))}")
        try:
            model = build_model(cfg.training.model, shape, classes, cfg.seed,
                                from_logits=cfg.training.loss_from_logits)
        except ValueError as exc:
            raise ConfigError("training.model", str(exc)) from None
        if cfg.rounds.classifier_refit != "none":
            from dlion.trainer import classifier_parts
            try:
                classifier_parts(model)
            except ValueError as exc:
                if cfg.rounds.classifier_refit == "always":
                    raise ConfigError("rounds.classifier_refit", str(exc)) from None
                lines.append(f"rounds.classifier_refit: when-skewed, but the trained layer stays: {exc}")
        params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        lines.append(f"training.model: {cfg.training.model}: {params:,} parameters, input {shape}, {classes} classes"
                     + (f" (data: {source})" if source else ""))
    return lines + [check_optimizer(cfg)]


def check_optimizer(cfg: Config) -> str:
    """`dlion validate`: build the configured Keras optimizer, so that Keras's own checks of its arguments run before
    anything starts; a ConfigError naming training.optimizer_params if they fail."""
    from dlion import trainer as trainer_mod  # TensorFlow
    tr, peak = cfg.training, learning_rate(cfg)
    try:
        optimizer = trainer_mod._make_optimizer(tr.optimizer, peak, tr.momentum, tr.optimizer_params, tr.lr_schedule)
    except (TypeError, ValueError) as exc:
        raise ConfigError("training.optimizer_params", f"{tr.optimizer} refuses them: {exc}") from None
    rate = (f"{peak:g}" if tr.lr_schedule.kind == "constant" and not tr.lr_schedule.warmup_steps
            else f"{tr.lr_schedule.kind} schedule peaking at {peak:g}")
    if (scale := cfg.rounds.learning_rate_scale) != 1:
        rate += f" (training.learning_rate {tr.learning_rate:g} x rounds.learning_rate_scale {scale:g})"
    return f"training.optimizer: {type(optimizer).__name__}, learning rate {rate}"


def learning_rate(cfg: Config) -> float:
    """The peer's (peak) learning rate: the training's, times the rounds' scale."""
    return cfg.training.learning_rate * cfg.rounds.learning_rate_scale


def evaluation_split(cfg: Config, dataset: datamod.Dataset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the indices the stop rule evaluates on, the training indices left to train on). `evaluation.on:
    validation`: `evaluation.subset` training samples (at most VALIDATION_FRACTION of them), drawn with `seed`, held
    out of training; `test`: a subset of the test set, and all training samples stay."""
    n = len(dataset.y_train)
    if cfg.evaluation.on == "test":
        return datamod.eval_subset(len(dataset.y_test), cfg.evaluation.subset, seed=cfg.seed), np.arange(n)
    size = max(1, min(cfg.evaluation.subset, int(n * VALIDATION_FRACTION)))
    held = datamod.eval_subset(n, size, seed=seed)
    return held, np.setdiff1d(np.arange(n), held, assume_unique=True)


@dataclass(frozen=True)
class LocalData:
    """A peer's view of the data: the dataset, the indices it trains on, its held-out slice (quality scores), what
    the stop rule evaluates on (`evaluation`), the model's input shape and number of classes."""

    dataset: datamod.Dataset
    train_idx: np.ndarray
    holdout_idx: np.ndarray
    eval_idx: np.ndarray
    eval_on_test: bool
    input_shape: tuple[int, ...]
    num_classes: int

    def evaluation(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the stop rule's evaluations."""
        x, y = ((self.dataset.x_test, self.dataset.y_test) if self.eval_on_test
                else (self.dataset.x_train, self.dataset.y_train))
        return x[self.eval_idx], y[self.eval_idx]

    def label_counts(self) -> np.ndarray:
        return np.bincount(self.dataset.y_train[self.train_idx], minlength=self.num_classes)


@dataclass(frozen=True)
class Stages:
    batching: object
    exchange: object
    gossip: object
    knowledge: object


def requirements(cfg: Config) -> Requirements:
    """What the configured strategies need from the data and the trainer, together."""
    needs = Requirements()
    for stage, registry in STAGE_REGISTRIES.items():
        chosen = getattr(cfg.strategies, stage)
        needs |= registry[chosen.kind].requires(chosen.params)
    return needs


def _make_data(cfg: Config, peer_id: int, dataset, needs: Requirements) -> LocalData:
    """A peer's data: its own source whole, or its part of the shared one (`training.partition`)."""
    dataset = dataset if dataset is not None else load_dataset(cfg, peer_id)
    tr = cfg.training
    own = cfg.peer(peer_id).data is not None
    # the shared data's evaluation samples are the same on every peer (the seed); a peer's own are its own
    eval_idx, pool = evaluation_split(cfg, dataset, seed=cfg.seed * 31 + peer_id if own else cfg.seed)
    if own:
        mine = pool
    else:
        ids = sorted(cfg.peer_ids)
        parts = datamod.partition(dataset.y_train[pool], len(ids), tr.partition.kind, seed=cfg.seed,
                                  alpha=tr.partition.alpha, fraction=tr.partition.fraction)
        mine = pool[parts[ids.index(peer_id)]]
    train_idx, holdout_idx = datamod.holdout_split(mine, needs.holdout, seed=cfg.seed * 31 + peer_id)
    return LocalData(dataset, train_idx, holdout_idx, eval_idx, cfg.evaluation.on == "test",
                     *shape_and_classes(cfg, dataset))


def batch_sampler(cfg: Config, peer_id: int, train_idx, resume_at: int | None = None) -> datamod.BatchSampler:
    """Peer `peer_id`'s batches of its training indices, drawn in the same order by whatever trains as that peer
    (scripts/anchor_mwms.py's worker too); a peer resumed at an iteration draws another order."""
    return datamod.BatchSampler(train_idx, seed=(cfg.seed * 7919 + peer_id + 1, resume_at or 0))


def _make_trainer(cfg: Config, peer_id: int, local: LocalData, needs: Requirements, threads: int | None = None):
    """The peer's trainer, on `threads` TensorFlow threads (None: the peer's own, `PeerSpec.tf_threads`; 0: as
    TensorFlow's thread pools already are)."""
    from dlion import trainer as trainer_mod  # TensorFlow is imported here, not at module load

    if threads != 0:
        trainer_mod.configure_threads(threads or cfg.peer(peer_id).tf_threads)
    tr = cfg.training
    options = training_options(tr) | {"learning_rate": learning_rate(cfg)}
    return trainer_mod.Trainer(model=tr.model, seed=cfg.seed, input_shape=local.input_shape,
                               num_classes=local.num_classes, label_prior=label_prior(local, needs), **options)


def label_prior(local: LocalData, needs: Requirements):
    """The class frequencies a peer's loss is adjusted for (skew compensation by logit adjustment): its own label
    counts, +1 each so that none is 0; None where no strategy asks for it."""
    return local.label_counts() + 1.0 if needs.label_prior else None


def transport_bounds(cfg: Config, num_values: int) -> tuple[WireLimits, dict]:
    """What every transport of the config accepts (messages up to the largest a model of `num_values` entries needs)
    and the bounds of its mailbox and norm guard."""
    limits = WireLimits(frozenset(cfg.peer_ids), max_message_bytes(num_values),
                        max_batch_weight=float(cfg.training.global_batch))
    tr = cfg.transport
    # a peer whose stages collect nothing moves its window at evaluations only
    window = max(tr.window_rounds, 2 * cfg.evaluation.every_iterations)
    return limits, {"suspect_after": tr.suspect_after, "window_rounds": window,
                    "max_held_bytes": int(tr.max_held_mb * 2 ** 20), "max_norm_ratio": cfg.security.max_norm_ratio}


def make_transport(cfg: Config, peer_id: int, num_values: int, link_policy=None, **settings) -> ZmqTransport:
    """The peer's ZeroMQ transport, accepting messages up to the largest a model of `num_values` entries needs, with
    the config's security (CURVE keys unless `security.mode` is none; raises security.KeysError if they are
    missing); `settings` override the config's transport settings (sndhwm, suspect_after)."""
    limits, bounds = transport_bounds(cfg, num_values)
    tr = cfg.transport
    options = {"sndhwm": tr.sndhwm, **bounds, **settings}
    keys = security.load(cfg, peer_id) if cfg.security.mode == "curve" else None
    heartbeat = (tr.heartbeat_s, tr.heartbeat_timeout_s) if tr.heartbeat_s else None
    return ZmqTransport(peer_id, {p.id: (p.address, p.port) for p in cfg.peers}, limits, link_policy=link_policy,
                        keys=keys, heartbeat=heartbeat, listen=tr.listen, **options)


def _lag(cfg: Config) -> int | None:
    """How many rounds a neighbour may lag in this config's stages (their largest staleness bound; 0: lockstep),
    None where the peer exchanges nothing and trains alone."""
    stages = (cfg.strategies.exchange, cfg.strategies.gossip, cfg.strategies.knowledge)
    if all(stage.kind == "none" for stage in stages):
        return None
    return max(getattr(stage.params, "staleness", 0) for stage in stages)


def _make_stages(cfg: Config, ctx: StageContext) -> Stages:
    def make(stage: str):
        chosen = getattr(cfg.strategies, stage)
        return STAGE_REGISTRIES[stage][chosen.kind](chosen.params, ctx)
    return Stages(**{stage: make(stage) for stage in STAGE_REGISTRIES})


def _warm_up(trainer, local: LocalData, batch: int, evaluation: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """One gradient computation of a step's `batch`, optimizer step, evaluation (of `evaluation`, the evaluation
    set as it is scored during training, else of the batch) and read and write of the optimizer's state (replicas
    and rejoin answers use them) before training, so that no round pays for TensorFlow's first-call work (tracing,
    graph optimization, kernel setup for a shape: seconds under a small CPU cap, which a peer joins only after this):
    every measured compute time is a real one. Then `WARM_UP_TIMED_STEPS` more steps; returns their median CPU
    seconds (all the process's threads: what other processes on the machine take does not count, so peers warming
    up together on one host measure alike). The model and optimizer are left as they were."""
    idx = local.train_idx[:batch]
    x, y = local.dataset.x_train[idx], local.dataset.y_train[idx]
    params, state = trainer.get_params(), trainer.optimizer_state()
    _, grads = trainer.gradients(x, y)
    trainer.apply(np.zeros_like(grads))
    trainer.evaluate(*(evaluation or (x, y)))
    trainer.set_optimizer_vector(trainer.optimizer_vector())
    cpu_s = []
    for _ in range(WARM_UP_TIMED_STEPS):
        began = time.process_time()
        trainer.apply(trainer.gradients(x, y)[1])
        cpu_s.append(time.process_time() - began)
    trainer.set_params(params)  # a training-mode pass moves BatchNorm statistics
    trainer.set_optimizer_state(state)  # a step moves the step count and the moments
    return float(np.median(cpu_s))


def build(cfg: Config, peer_id: int, out_dir: str | Path, *, transport=None, dataset=None,
          clock: StepClock | None = None, link_policy=None, stop_event: threading.Event | None = None,
          resume_at: int | None = None, trainer=None, now=time.monotonic, wall=time.time, warm_up: bool = True):
    """A ready peer. `transport` and `dataset` can be injected (tests, benchmarks); `clock` and `link_policy` are
    the emulation's hooks (none: unpaced compute, links as they are); `resume_at`: continue from this peer's
    checkpoint of that iteration (dlion.checkpoint). A simulation (`dlion.simulate`) also injects the `trainer`
    (its view of one shared model), the clocks the loop, its stages and its events run on (`now`: monotonic, `wall`:
    an event's `t`), and leaves out the warm-up, done once for all peers."""
    log = EventLog(peer_log_path(out_dir, peer_id), peer_id, sinks=tensorboard_sinks(cfg.output, out_dir, peer_id),
                   clock=wall)
    needs = requirements(cfg)
    local = _make_data(cfg, peer_id, dataset, needs)
    if trainer is None:
        trainer = _make_trainer(cfg, peer_id, local, needs)
    elif needs.label_prior:  # a simulated peer's view of a shared model: its own loss all the same
        trainer.set_label_prior(label_prior(local, needs))
    if transport is None:
        transport = make_transport(cfg, peer_id, max(trainer.num_params, trainer.num_state), link_policy)
    x_hold, y_hold = local.dataset.x_train[local.holdout_idx], local.dataset.y_train[local.holdout_idx]
    model = ModelAccess(get=trainer.get_params, set=trainer.set_params,
                        score=lambda: trainer.evaluate(x_hold, y_hold)[0])
    ids = tuple(sorted(cfg.peer_ids))
    graph = cfg.graph()
    others = [p for p in ids if p != peer_id]
    ctx = StageContext(peer_id, ids, transport, graph, cfg.training.global_batch, {p: cfg.cores(p) for p in ids},
                       {d: cfg.link(peer_id, d).bandwidth for d in others}, model,
                       inbound_bandwidths={s: cfg.link(s, peer_id).bandwidth for s in others}, clock=now)
    stages = _make_stages(cfg, ctx)
    x_eval, y_eval = local.evaluation()
    if warm_up:
        step_batch = step_batches(stages.batching.batch_size(0), cfg.rounds.local_steps, cfg.rounds.min_step_batch)[0]
        step_cpu_s = _warm_up(trainer, local, step_batch, (x_eval, y_eval))
        # the peer's cores do a step in its CPU seconds over the cores (the emulation's pacer charges just that)
        stages.batching.calibrate(step_batch * cfg.cores(peer_id) / max(step_cpu_s, 1e-6))
    resumed = None
    if resume_at is not None:
        resumed = checkpoint.load(out_dir, peer_id, resume_at)
        trainer.set_params(resumed["params"])
        trainer.set_optimizer_state(resumed["optimizer"])
    clock = clock or Unpaced()
    control = RunControl(cfg.training, cfg.evaluation, ctx, lambda: trainer.evaluate(x_eval, y_eval), log.emit,
                         stop_event or threading.Event(), cfg.rounds.local_steps, _lag(cfg))
    progress = ProgressReport(log, cfg.output.log_every, transport, stages.batching, clock, cfg.peer(peer_id).cores)
    sampler = batch_sampler(cfg, peer_id, local.train_idx, resume_at)
    return Peer(cfg, ctx, local, trainer, sampler, stages, clock, control, progress, log, out_dir, resumed,
                _make_refit(cfg, ctx, trainer, local))


def _make_refit(cfg: Config, ctx: StageContext, trainer, local: LocalData) -> ClassifierRefit | None:
    """The classifier refit's end-of-training step, if the config asks for it. A model whose last layer cannot be
    refitted is refused with `always` (before anything starts) and keeps its trained layer with `when-skewed`."""
    mode = cfg.rounds.classifier_refit
    if mode == "none":
        return None
    try:
        trainer.check_classifier()
    except ValueError:
        if mode == "always":
            raise
        return None
    return ClassifierRefit(ctx, trainer, local.dataset.x_train, local.dataset.y_train, local.train_idx, local.num_classes,
                           cfg.rounds.final_average_timeout_s, cfg.seed, always=mode == "always")


def run_peer(cfg: Config, peer_id: int, out_dir: str | Path, clock: StepClock | None = None,
             link_policy=None, ready=lambda: None, trained=lambda: None, resume_at: int | None = None) -> dict:
    """Run one peer in this process until it stops; SIGTERM and SIGINT end it cleanly after the current step.
    `ready()` is called once the peer is built (TensorFlow imported, model traced), before it meets the others;
    `trained()` once its training is over, before its final evaluation."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("dlion.peer").info("peer %d: signal %d, stopping", peer_id, signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    peer = build(cfg, peer_id, out_dir, clock=clock, link_policy=link_policy, stop_event=stop, resume_at=resume_at)
    ready()
    return peer.run(after_training=trained)
