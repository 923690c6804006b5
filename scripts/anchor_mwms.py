#!/usr/bin/env python3
"""The TensorFlow user's baseline for a scenario: tf.distribute.MultiWorkerMirroredStrategy (synchronous all-reduce).

    python3 scripts/anchor_mwms.py SCENARIO [--set KEY.PATH=VALUE ...] [--out DIR]

One OS process per peer of the scenario, each an MWMS worker (TF_CONFIG: the peers' addresses and ports, gRPC
collective ops, ring all-reduce). Worker i trains on what dlion gives peer i (its partition of the shared data, or
its own source; no holdout, as bsp's peers) in peer i's batch order, with the scenario's model, optimizer (parameters
and learning-rate schedule), loss, seed and TensorFlow threads, on global_batch / workers samples per step (MWMS's
equal shares; the remainder of an uneven split is dropped). Its variables are MWMS's mirrored ones and the optimizer
all-reduces the gradients itself. Every evaluation.every_iterations steps each worker scores the scenario's
evaluation subset; the run stops, as a dlion run does, when the workers' mean accuracy reaches the target (with
stop_at_target), at max_iterations, or after max_seconds since training started. The workers agree on every stop
through an all-reduce, so all of them stop at the same step.

Emulation: the scenario's method, set up as `dlion run` sets it up (`dlion.launch`), as far as gRPC lets it. The
summary's `emulation` says which applied, `emulated` what it covered:
- real (emulation.method real, or auto where root allows): each worker in its peer's network namespace, its traffic
  shaped by tc to the links' bandwidths, in its peer's CPU cgroup, its gradient computation paced to its cores as a
  peer's (`dlion.emulate.pacing`); scheduled changes applied. Link latency only where the kernel has netem: dlion's
  peers add it in their transport, which gRPC does not go through.
- cpu-only (emulation.method fallback, or auto without root): compute paced, CPU turns, pinning and nice, as a
  fallback peer's; links not emulated (the fallback shapes them in dlion's transport).
- none: as the host runs them.

Output in DIR (default: the scenario's output.dir + "-mwms"): per worker `peer-<id>.jsonl` (start, iter, eval and
final events, as a peer writes them) and `peer-<id>.log`, `config.yaml`, and `summary.json` with a dlion run's
summary fields (`dlion.analysis.summarize`: `scripts/compare.py SCENARIO --presets bsp,mwms` takes the run as one
more column) plus `baseline`, `settings`, `emulated` and `bytes_estimated`. Bytes sent are an estimate: in a ring
all-reduce each of n workers sends (and receives) 2 (n - 1) / n times the reduced bytes (gradients count as `grad`,
stop votes and evaluation figures as `control`); under the real method `bytes_measured` adds what tc counted on each
worker's link to the others (TCP/IP and gRPC headers included). The last line is a JSON object: the summary without
its per-peer part. Exit status 0 if every worker finished, 1 if not, 2 on a config or data mistake.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlion import config as configmod  # noqa: E402
from dlion import data as datamod  # noqa: E402
from dlion import launch, wiring  # noqa: E402
from dlion.analysis import summarize  # noqa: E402
from dlion.emulate import EmulationError  # noqa: E402
from dlion.schema import ConfigError  # noqa: E402
from dlion.stages import Requirements  # noqa: E402

FLOAT_BYTES = 4
VOTES = ("max_seconds", "signal")  # the stop reasons every worker votes on at every step
LABELS = {"real": "real", "fallback": "cpu-only", "none": "none"}  # the summary's `emulation`, by method in force


# ---- settings: pure functions of the config -------------------------------------------------------------------------

def worker_batch(cfg: configmod.Config) -> int:
    """Each worker's batch: MWMS shares the global batch equally among its workers."""
    return cfg.training.global_batch // len(cfg.peers)


def tf_config(cfg: configmod.Config, peer_id: int) -> dict:
    """The TF_CONFIG of peer `peer_id`'s worker: every peer's address and port, worker index = rank of its peer id."""
    ids = sorted(cfg.peer_ids)
    return {"cluster": {"worker": [f"{cfg.peer(p).address}:{cfg.peer(p).port}" for p in ids]},
            "task": {"type": "worker", "index": ids.index(peer_id)}}


def ring_bytes(workers: int, nbytes: int) -> float:
    """Bytes each of `workers` sends in a ring all-reduce of `nbytes`: a reduce-scatter and an all-gather, each n - 1
    chunks of nbytes / n."""
    return 2 * (workers - 1) / workers * nbytes


def settings(cfg: configmod.Config) -> dict:
    """What the workers run with, for the summary."""
    tr, n = cfg.training, len(cfg.peers)
    return {"workers": n, "worker_batch": worker_batch(cfg), "global_batch": worker_batch(cfg) * n,
            "configured_global_batch": tr.global_batch, "model": tr.model, "optimizer": tr.optimizer,
            "learning_rate": tr.learning_rate, "partition": tr.partition.kind,
            "evaluation_every": cfg.evaluation.every_iterations, "evaluation_subset": cfg.evaluation.subset,
            "target_accuracy": tr.target_accuracy, "max_seconds": tr.max_seconds, "max_iterations": tr.max_iterations,
            "tf_threads": {str(p.id): p.tf_threads for p in cfg.peers}}


def emulated(cfg: configmod.Config, kernel_latency: bool = False) -> dict:
    """What the run emulated of the scenario under the method in force (`cfg` as launched: auto resolved);
    `kernel_latency`: whether the real method's kernel has netem."""
    method = cfg.emulation.method
    ids = cfg.peer_ids
    latency = any(cfg.link(s, d).latency for s in ids for d in ids if s != d) or any(c.latency for c in cfg.schedule)
    return {"method": LABELS[method], "compute": method != "none", "bandwidth": method == "real",
            "latency": method == "real" and kernel_latency, "configured_latency": bool(latency)}


class Traffic:
    """What a worker's all-reduces have sent (and received: as much in a ring), estimated by `ring_bytes`, by kind:
    the gradients as `grad`, the stop votes and evaluation figures as `control`."""

    def __init__(self, workers: int, num_params: int):
        self.workers, self.num_params = workers, num_params
        self.by_kind = {"grad": 0.0, "control": 0.0}

    def step(self) -> None:
        """One training step: the gradient and the stop votes."""
        self.by_kind["grad"] += ring_bytes(self.workers, FLOAT_BYTES * self.num_params)
        self.by_kind["control"] += ring_bytes(self.workers, FLOAT_BYTES * len(VOTES))

    def agree(self, values: int = 1) -> None:
        """An all-reduce of `values` figures (an evaluation's accuracy)."""
        self.by_kind["control"] += ring_bytes(self.workers, FLOAT_BYTES * values)

    def fields(self) -> dict:
        """The traffic fields of a peer's iter and final events."""
        total = round(sum(self.by_kind.values()))
        return {"bytes_sent": total, "bytes_received": total, "messages_dropped": 0}


def worker_data(cfg: configmod.Config, peer_id: int):
    """(peer `peer_id`'s data, its batch sampler): what dlion gives that peer where no stage asks for a holdout
    (bsp's peers), in the peer's batch order."""
    local = wiring._make_data(cfg, peer_id, None, Requirements())
    return local, wiring.batch_sampler(cfg, peer_id, local.train_idx)


# ---- one worker -------------------------------------------------------------------------------------------------

def worker(cfg: configmod.Config, peer_id: int, out_dir: Path) -> None:
    """Peer `peer_id`'s MWMS worker until a stop rule; writes its events as the peer would."""
    os.environ["TF_CONFIG"] = json.dumps(tf_config(cfg, peer_id))
    import tensorflow as tf

    from dlion import trainer as trainer_mod
    from dlion.clock import Unpaced
    from dlion.emulate import fallback, real
    from dlion.metrics import EventLog, peer_log_path
    from dlion.optimizers import training_options

    spec, tr = cfg.peer(peer_id), cfg.training
    trainer_mod.configure_threads(spec.tf_threads)  # before MWMS starts TensorFlow's runtime
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=cfg.transport.startup_timeout_s))  # a vanished worker ends the others' collectives
    n = strategy.num_replicas_in_sync
    local, sampler = worker_data(cfg, peer_id)
    with strategy.scope():
        trainer = trainer_mod.Trainer(model=tr.model, seed=cfg.seed, input_shape=local.input_shape,
                                      num_classes=local.num_classes, trace_at_init=False, **training_options(tr))
    gradients, apply = trainer.replica_step(n)

    def all_sum(values):
        # tf.identity: a tensor made in the replica is on its device, which the all-reduce needs (an input is not)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(values))

    @tf.function
    def compute(x, y):
        return strategy.run(gradients, args=(x, y))

    @tf.function
    def update(flat, votes):
        def step(flat, votes):
            apply(flat)
            return all_sum(votes)
        return strategy.run(step, args=(flat, votes))

    agree = tf.function(lambda values: strategy.run(all_sum, args=(values,)))

    batch = worker_batch(cfg)
    x_train, y_train = local.dataset.x_train, local.dataset.y_train
    # first-call work (tracing, the collectives' group) before training, as a peer's warm-up; the state is put back
    params, state = trainer.get_params(), trainer.optimizer_state()
    warm = local.train_idx[:batch]
    _, flat = compute(*trainer.stage(x_train[warm], y_train[warm]))
    update(tf.zeros_like(flat), tf.zeros(len(VOTES)))
    trainer.evaluate(x_train[warm], y_train[warm])
    trainer.set_params(params)
    trainer.set_optimizer_state(state)

    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    emulation = fallback.for_peer(cfg, peer_id, turns_dir=out_dir)
    clock = emulation or Unpaced()
    real.enter_cgroup()  # under the real method: into the peer's CPU cgroup, now that TensorFlow is up
    agree(tf.zeros(1))  # every worker is ready: they start together
    log = EventLog(peer_log_path(out_dir, peer_id), peer_id)
    log.emit("start", pid=os.getpid(), cores=spec.cores, threads=spec.tf_threads, num_params=trainer.num_params,
             train_samples=len(local.train_idx), emulation=LABELS[cfg.emulation.method], baseline="mwms",
             workers=n, batch=batch)
    x_eval, y_eval = local.evaluation()
    traffic = Traffic(n, trainer.num_params)
    clock.start()
    started, eval_s, it, samples, rows, reason = time.monotonic(), 0.0, 0, 0, [], None
    while reason is None:
        if tr.max_iterations is not None and it >= tr.max_iterations:
            reason = "max_iterations"
            break
        idx = sampler.next(batch)
        began = time.monotonic()
        with clock.step():
            loss, flat = compute(*trainer.stage(x_train[idx], y_train[idx]))
        computed = time.monotonic()
        votes = {"max_seconds": tr.max_seconds is not None and computed - started >= tr.max_seconds,
                 "signal": bool(stopping)}
        agreed = dict(zip(VOTES, update(flat, tf.constant([float(votes[v]) for v in VOTES])).numpy()))
        it, samples = it + 1, samples + batch
        traffic.step()
        rows.append((float(loss), computed - began, time.monotonic() - computed))
        if it % cfg.output.log_every == 0:
            loss_mean, compute_s, wait_s = (sum(r[i] for r in rows) / len(rows) for i in range(3))
            rows.clear()
            log.emit("iter", it=it, steps=it, batch=batch, samples=samples, cores=clock.cores or spec.cores,
                     samples_per_s=round(samples / max(time.monotonic() - started, 1e-9), 2),
                     loss=round(loss_mean, 5), compute_s=round(compute_s, 5), wait_s=round(wait_s, 5),
                     **traffic.fields(), **log.resources())
        # any worker's vote stops them all, a signal before the time
        reason = "signal" if agreed["signal"] else "max_seconds" if agreed["max_seconds"] else None
        if reason is None and it % cfg.evaluation.every_iterations == 0:
            began = time.monotonic()
            train_s = began - started - eval_s
            eval_loss, acc = trainer.evaluate(x_eval, y_eval)
            mean = float(agree(tf.constant([acc], tf.float32)).numpy()[0]) / n
            traffic.agree()
            eval_s += time.monotonic() - began
            log.emit("eval", it=it, acc=round(acc, 5), loss=round(eval_loss, 5), mean_acc=round(mean, 5),
                     peers_reported=n, train_s=round(train_s, 3), eval_s=round(eval_s, 3))
            if tr.target_accuracy is not None and tr.stop_at_target and mean >= tr.target_accuracy:
                reason = "target"
    train_s = time.monotonic() - started
    clock.close()
    test_loss, test_acc = trainer.evaluate(local.dataset.x_test, local.dataset.y_test)
    log.emit("final", stop_reason=reason, it=it, steps=it, samples=samples, train_s=round(train_s, 3),
             samples_per_s=round(samples / max(train_s, 1e-9), 2), acc=round(test_acc, 5), loss=round(test_loss, 5),
             **traffic.fields(), bytes_by_kind={k: round(v) for k, v in traffic.by_kind.items()},
             bytes_estimated=True)
    log.close()


# ---- the run ----------------------------------------------------------------------------------------------------

def measured_bytes(emulation) -> dict[str, int]:
    """Per worker, the bytes tc counted on its link to the other workers (the real method's shaping classes)."""
    peers = emulation.status()["peers"]
    return {str(pid): sum(c["sent_bytes"] for c in p["classes"].values() if c["dst"] is not None)
            for pid, p in peers.items()}


def run(cfg: configmod.Config, out_dir: Path, stream=sys.stdout) -> dict:
    """Every worker of the scenario under its emulation, supervised as `dlion run` supervises peers; the summary."""
    if cfg.training.dataset == "fashion-mnist" and cfg.training.data is None:
        datamod.require_fashion_mnist(cfg.training.data_dir)  # fail before any worker starts
    script = str(Path(__file__).resolve())

    def argv_for(config_path: Path):
        return lambda peer_id: [sys.executable, script, str(config_path), "--worker", str(peer_id), "--out",
                                str(out_dir)]

    previous_handler = signal.signal(signal.SIGTERM, launch._interrupt)  # as Ctrl-C: the emulation comes down
    try:
        with launch.launched(cfg, out_dir, lambda resolved: launch.prepare_out_dir(resolved, out_dir),
                             argv_for) as run_:
            progress = launch.Progress(out_dir, cfg.peer_ids, stream)
            interrupted = launch.supervise(run_, lambda: progress.train_start, launch.hard_limit_s(cfg),
                                           progress.tick, stream=stream)
            measured = measured_bytes(run_.emulation) if run_.emulation else None
            what = emulated(run_.cfg, run_.emulation.kernel_latency if run_.emulation else False)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    wall_s = time.monotonic() - run_.started
    progress.poll()
    progress.show(wall_s)
    summary = summary_of(out_dir, cfg, wall_s, what, measured, interrupted=interrupted,
                         exit_codes={str(pid): p.returncode for pid, p in run_.procs.items()})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if what["configured_latency"] and not what["latency"]:
        print("anchor_mwms: the scenario's link latency is not emulated for gRPC (see `emulated`)", file=stream)
    return summary


def summary_of(out_dir: Path, cfg: configmod.Config, wall_s: float, what: dict, measured: dict | None,
               **fields) -> dict:
    """A dlion run's summary of the workers' events (`dlion.analysis.summarize`), with what makes it an anchor's."""
    summary = summarize(out_dir, cfg.peer_ids, cfg.training.target_accuracy, wall_s)
    return {**summary, "baseline": "mwms", "emulated": what, "settings": settings(cfg), "bytes_estimated": True,
            "bytes_measured": measured, **fields}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", help="YAML config of the scenario")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--out", help="output directory (default: the scenario's output.dir + '-mwms')")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # one worker, started by the run
    args = parser.parse_args(argv)
    try:
        cfg = configmod.load(args.scenario, args.set)
    except ConfigError as exc:
        print(f"anchor_mwms: config error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out or cfg.output.dir.rstrip("/") + "-mwms")
    if args.worker is not None:
        try:
            worker(cfg, args.worker, out_dir)
        except Exception:
            traceback.print_exc()
            return 1
        return 0
    try:
        summary = run(cfg, out_dir)
    except (datamod.DataError, EmulationError) as exc:
        print(f"anchor_mwms: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "peers"}))
    return 0 if summary["peers_finished"] == len(cfg.peers) and not summary["interrupted"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
