"""`dlion simulate CONFIG`: every peer of a config in this one process, in virtual time.

Design. The simulator adapts clocks and transports around the real peers; it runs no loop of its own. Each peer is
the real `dlion.peer.Peer` built by `dlion.wiring.build`, with the same batching, exchange, gossip and knowledge
strategy objects, run control, progress events and final evaluation as a peer process, given four things instead of
the host's: the stages' clock and the events' clock read the scheduler's virtual time (`scheduler`); its trainer is
a view of one shared model whose TensorFlow work costs calibrated virtual time at the peer's cores (`compute`); its
transport is the in-process one, delivering each message at the virtual time its link says (`links`, `transport`);
and its mailbox waits in virtual time. The peers' loops run in threads that take turns (one at a time, in virtual-time
order), so a run depends only on the config and the calibration: not on the host, its load, or how long the host
took. The outputs are a real run's (`summary.json` from `dlion.analysis.summarize`, per-peer JSONL events with times
in virtual seconds from the start, the peers' models), so `dlion report` and scripts/compare.py read them alike.

What it does not model: CPU time outside TensorFlow (the strategies' numpy work, encoding, the event log) costs no
virtual time, unless `cpu_overhead` charges what it takes this host, the receiving side's decoding and checks
included (measured, so no longer repeatable exactly); peers do not contend for a host (each has its own cores); links
have no loss, jitter or congestion beyond their own queues (`links`); there is no hello barrier (the network is up at
time 0) and no crash, freeze or restart, hence no rejoin (a rejoin's waits use the host's clock and would stall the
simulation); checkpoints and TensorBoard are off. Skew compensation by logit adjustment (a per-peer loss) cannot
share one model and is refused.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from dlion import wiring
from dlion.analysis import summarize
from dlion.config import Config
from dlion.launch import prepare_out_dir
from dlion.transport.inproc import InprocHub

from . import compute
from .links import SimLinks
from .scheduler import Scheduler
from .transport import VirtualTransport

PROGRESS_EVERY_S = 10.0  # wall seconds between progress lines
WARM_UP_BATCH = 32


def for_simulation(cfg: Config) -> Config:
    """The config as simulated: no checkpoints (a simulation is not resumed), no TensorBoard writers (hundreds of
    peers), no heartbeats (nothing freezes; a peer's loop may stand still for long on the host's clock while the
    others' steps run)."""
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, checkpoint_every=None, tensorboard=False),
                               transport=dataclasses.replace(cfg.transport, heartbeat_s=None))


def simulate(cfg: Config, out_dir: str | Path, *, queue: str = "link", calibration: str | Path | None = None,
             recalibrate: bool = False, cpu_overhead: bool = False, stream=None, trace: bool = False) -> dict:
    """Simulate `cfg` into `out_dir` (which `launch.prepare_out_dir` readies: earlier results there are replaced);
    returns (and writes) the summary, with the simulation's own figures under "simulation". `queue`: the links'
    queues (`links.QUEUES`); `calibration`: the calibration cache file (default `compute.default_cache()`);
    `cpu_overhead`: also charge the peers' own CPU time outside TensorFlow (`compute.HostCpu`; not repeatable)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    stream = stream or sys.stdout  # the one of the call, not of the import
    began = time.monotonic()
    cfg = for_simulation(cfg)
    out_dir = Path(out_dir)
    prepare_out_dir(cfg, out_dir)
    ids = sorted(cfg.peer_ids)
    needs = wiring.requirements(cfg)
    shared_data = all(p.data is None for p in cfg.peers)
    dataset = wiring.load_dataset(cfg) if shared_data else None

    import tensorflow as tf
    from dlion import trainer as trainer_mod
    tf.config.experimental.enable_op_determinism()  # the same run twice gives the same figures
    try:
        trainer_mod.configure_threads(1)  # one core-equivalent
        threads = 1
    except RuntimeError:  # TensorFlow already runs in this process (tests, a notebook) on other thread pools
        logging.getLogger("dlion.simulate").warning(
            "TensorFlow was started with other thread pools in this process: calibrating on those (CPU seconds of "
            "all their threads)")
        threads = 0
    first = wiring._make_data(cfg, ids[0], dataset, needs)
    # the shared model starts without a label prior: each peer's view sets its own (logit adjustment)
    trainer = wiring._make_trainer(cfg, ids[0], first, dataclasses.replace(needs, label_prior=False), threads=threads)
    wiring._warm_up(trainer, first, WARM_UP_BATCH)
    sample = np.resize(first.train_idx, max(*compute.STEP_BATCHES, *compute.EVAL_SIZES))
    x, y = first.dataset.x_train[sample], first.dataset.y_train[sample]
    cal, measured = compute.load_or_calibrate(cfg, trainer, x, y, calibration, recalibrate)
    (out_dir / "calibration.json").write_text(json.dumps(dataclasses.asdict(cal), indent=2))
    print(f"calibration ({'measured' if measured else 'cached'}): a step of b samples takes "
          f"{cal.step_fixed_s * 1e3:.2f} ms + b x {cal.step_per_sample_s * 1e3:.3f} ms on one core; an optimizer "
          f"step {cal.apply_s * 1e3:.2f} ms", file=stream, flush=True)

    scheduler = Scheduler(trace=trace)
    hub, links, model = InprocHub(), SimLinks(cfg, queue), compute.SharedModel(trainer)
    limits, bounds = wiring.transport_bounds(cfg, max(trainer.num_params, trainer.num_state))
    stop = threading.Event()
    meters = []
    for pid in ids:
        actor = scheduler.actor(f"peer-{pid}")
        charge = compute.charger(actor, cfg, pid)
        if cpu_overhead:
            actor.meter = compute.HostCpu(charge)
            meters.append(actor.meter)
        transport = VirtualTransport(pid, hub, limits, actor, links, **bounds)
        transport.start()
        peer = wiring.build(cfg, pid, out_dir, transport=transport, dataset=dataset, stop_event=stop,
                            clock=compute.SimulatedClock(cfg, pid, scheduler.clock),
                            trainer=model.view(charge, cal, actor.meter),
                            now=scheduler.clock, wall=scheduler.clock, warm_up=False)
        actor.start(peer.run)
    setup_s = time.monotonic() - began
    print(f"{len(ids)} peers ready in {setup_s:.1f} s; simulating", file=stream, flush=True)

    shown = [time.monotonic()]

    def tick() -> None:
        if time.monotonic() - shown[0] >= PROGRESS_EVERY_S:
            shown[0] = time.monotonic()
            done = sum(a.done for a in scheduler.actors)
            print(f"[{shown[0] - began:6.0f} s] virtual {scheduler.now:8.2f} s, {done}/{len(ids)} peers done, "
                  f"{scheduler.events} events", file=stream, flush=True)

    interrupt = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set()) if interrupt else None
    gc.collect()
    gc.freeze()  # the peers' long-lived objects out of every collection: hundreds of peers hold millions
    started = time.monotonic()
    try:
        scheduler.run(tick=tick)
    finally:
        gc.unfreeze()
        if interrupt:
            signal.signal(signal.SIGINT, previous)
    run_s = time.monotonic() - started
    errors = {a.name: a.error for a in scheduler.actors if a.error}
    for name, error in errors.items():
        print(f"{name} failed:\n{error}", file=sys.stderr)

    summary = summarize(out_dir, ids, cfg.training.target_accuracy, scheduler.now)
    steps = sum(p["steps"] for p in summary["peers"].values())
    summary["simulation"] = {
        "peers": len(ids),
        "virtual_s": round(scheduler.now, 3),
        "wall_s": round(time.monotonic() - began, 3),
        "setup_s": round(setup_s, 3),
        "run_s": round(run_s, 3),
        "peer_iterations": steps,
        "peer_rounds": sum(p["iterations"] for p in summary["peers"].values()),
        "peer_iterations_per_s": round(steps / max(run_s, 1e-9), 1),
        "events": scheduler.events,
        "model_swaps": model.swaps,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "queue": queue,
        "cpu_overhead_s": round(sum(m.charged_s for m in meters), 3) if cpu_overhead else None,
        "calibration": dataclasses.asdict(cal),
        "calibration_measured": measured,
        "errors": {name: error.strip().splitlines()[-1] for name, error in errors.items()},
        "interrupted": stop.is_set(),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
