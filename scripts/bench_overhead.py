#!/usr/bin/env python3
"""Overhead of dlion's pipeline against a plain TensorFlow training loop, on the same model, data and batch.

One peer with no neighbours runs the full pipeline (batching -> flat gradients -> exchange -> apply through the
optimizer, with its metrics and transport) for N iterations, and a plain fused `tf.function` training step runs N
iterations on a fresh model of the same kind: by default the idiomatic step (`optimizer.apply` inside one graph), with
`--strict` one that also uses the pipeline's XLA-compiled optimizer update, so only the cost of splitting the step
remains. They run in pairs, R times, the
order alternating between pairs (ABBA...) so that machine drift hits both alike. The last line is a JSON object with
both samples/s (medians over the repeats) and the ratio pipeline / plain (the median of the per-pair ratios).

    python3 scripts/bench_overhead.py [--model cnn] [--batch 64] [--iterations 400] [--repeats 5] [--threads 2] [--strict]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlion import config as configmod  # noqa: E402
from dlion import data as datamod  # noqa: E402


def one_peer_config(args, port: int, out_dir: str) -> configmod.Config:
    return configmod.parse({
        "seed": 1,
        "peers": [{"id": 0, "port": port, "cores": float(args.threads), "threads": args.threads}],
        "training": {"dataset": args.dataset, "model": args.model, "global_batch": args.batch,
                     "optimizer": "adam", "learning_rate": 1e-3, "max_iterations": args.iterations},
        "evaluation": {"every_iterations": 10 * args.iterations},  # no evaluation inside the timed loop
        "output": {"dir": out_dir},
    })


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipeline_rate(args, dataset, out_root: Path, rep: int) -> float:
    from dlion.wiring import build
    out_dir = out_root / f"pipeline-{rep}"
    cfg = one_peer_config(args, free_port(), str(out_dir))
    peer = build(cfg, 0, out_dir, dataset=dataset)
    idx = peer.sampler.next(args.batch)
    for _ in range(3):  # trace and warm up outside the timed loop, as for the plain loop
        _, grads = peer.trainer.gradients(dataset.x_train[idx], dataset.y_train[idx])
        peer.trainer.apply(grads)
    final = peer.run()
    return final["samples"] / final["train_s"]


def plain_rate(args, dataset, rep: int) -> float:
    from dlion.trainer import Trainer
    trainer = Trainer(model=args.model, optimizer="adam", learning_rate=1e-3, seed=1)
    sampler = datamod.BatchSampler(datamod.partition(dataset.y_train, 1, "iid", seed=1)[0], seed=rep + 1)
    step = trainer.fused_step(args.strict)
    idx = sampler.next(args.batch)
    for _ in range(3):
        step(dataset.x_train[idx], dataset.y_train[idx])
    start = time.monotonic()
    for _ in range(args.iterations):
        idx = sampler.next(args.batch)
        step(dataset.x_train[idx], dataset.y_train[idx])
    return args.iterations * args.batch / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "synthetic"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--strict", action="store_true", help="baseline with the pipeline's XLA optimizer update")
    args = parser.parse_args()

    from dlion import trainer
    trainer.configure_threads(args.threads)
    dataset = (datamod.synthetic(seed=1) if args.dataset == "synthetic"
               else datamod.load_fashion_mnist(datamod.DEFAULT_DATA_DIR))
    pipeline, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            if rep % 2 == 0:
                pipeline.append(pipeline_rate(args, dataset, Path(tmp), rep))
                plain.append(plain_rate(args, dataset, rep))
            else:
                plain.append(plain_rate(args, dataset, rep))
                pipeline.append(pipeline_rate(args, dataset, Path(tmp), rep))
            print(f"repeat {rep}: pipeline {pipeline[-1]:.0f} samples/s, plain TF {plain[-1]:.0f} samples/s, "
                  f"ratio {pipeline[-1] / plain[-1]:.3f}", flush=True)
    result = {"baseline": "xla-update" if args.strict else "idiomatic", "model": args.model, "batch": args.batch, "iterations": args.iterations, "repeats": args.repeats,
              "threads": args.threads, "pipeline_samples_per_s": round(statistics.median(pipeline), 1),
              "plain_tf_samples_per_s": round(statistics.median(plain), 1),
              "ratio": round(statistics.median(a / b for a, b in zip(pipeline, plain)), 4)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
