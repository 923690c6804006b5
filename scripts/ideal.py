#!/usr/bin/env python3
"""The machine's limit for a scenario: one process, all of this machine's cores and all the data, no communication.

    python3 scripts/ideal.py SCENARIO [--set KEY.PATH=VALUE ...] [--threads N]

Same model, optimizer (with its parameters and learning-rate schedule), loss, seed and global batch as the scenario's
peers, the whole training set in one place, a plain fused TensorFlow step (`Trainer.fused_step`), TensorFlow threads =
this machine's CPUs. It evaluates on the scenario's evaluation subset every `evaluation.every_iterations` iterations
and stops at the scenario's target (or its `max_seconds` / `max_iterations`); training time leaves the evaluation
pauses out, as a run's time to target does. No emulation: this is what the CPUs that a scenario shares out among its
peers do when nothing is shared. The last line is a JSON object: time_to_target_s, iterations, samples_per_s,
final_accuracy (full test set), threads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlion import config as configmod  # noqa: E402
from dlion import data as datamod  # noqa: E402
from dlion.optimizers import training_options  # noqa: E402
from dlion.schema import ConfigError  # noqa: E402
from dlion.wiring import evaluation_split, load_dataset, shape_and_classes  # noqa: E402


def ideal(cfg: configmod.Config, threads: int) -> dict:
    from dlion import trainer as trainer_mod
    trainer_mod.configure_threads(threads)
    tr = cfg.training
    dataset = load_dataset(cfg)
    input_shape, num_classes = shape_and_classes(cfg, dataset)
    trainer = trainer_mod.Trainer(model=tr.model, seed=cfg.seed, input_shape=input_shape, num_classes=num_classes,
                                  **training_options(tr))
    step = trainer.fused_step()
    eval_idx, pool = evaluation_split(cfg, dataset, seed=cfg.seed)  # the peers' evaluation samples, held out
    sampler = datamod.BatchSampler(pool, seed=cfg.seed)
    x_eval, y_eval = ((dataset.x_test, dataset.y_test) if cfg.evaluation.on == "test"
                      else (dataset.x_train, dataset.y_train))
    x_eval, y_eval = x_eval[eval_idx], y_eval[eval_idx]
    warm = sampler.next(tr.global_batch)
    trainer.gradients(dataset.x_train[warm], dataset.y_train[warm])  # first-call work, as a peer's wiring does
    train_s, iterations, reached, accuracy = 0.0, 0, None, None
    while ((tr.max_seconds is None or train_s < tr.max_seconds)
           and (tr.max_iterations is None or iterations < tr.max_iterations)):
        began = time.monotonic()
        idx = sampler.next(tr.global_batch)
        step(dataset.x_train[idx], dataset.y_train[idx])
        train_s += time.monotonic() - began
        iterations += 1
        if iterations % cfg.evaluation.every_iterations == 0:
            accuracy = trainer.evaluate(x_eval, y_eval)[1]
            if reached is None and tr.target_accuracy is not None and accuracy >= tr.target_accuracy:
                reached = train_s
                if tr.stop_at_target:
                    break
    final = trainer.evaluate(dataset.x_test, dataset.y_test)[1]
    return {"scenario": cfg.name, "time_to_target_s": None if reached is None else round(reached, 3),
            "target_accuracy": tr.target_accuracy, "iterations": iterations,
            "samples_per_s": round(iterations * tr.global_batch / max(train_s, 1e-9), 1),
            "final_accuracy": round(final, 5), "eval_accuracy": accuracy, "threads": threads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", help="YAML config of the scenario")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="TensorFlow threads (default: this machine's CPUs)")
    args = parser.parse_args(argv)
    try:
        cfg = configmod.load(args.scenario, args.set)
    except ConfigError as exc:
        print(f"ideal: config error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(ideal(cfg, args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
