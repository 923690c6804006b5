"""Checkpoints: what a peer needs to continue a stopped run, written every `output.checkpoint_every` iterations.

`<out>/checkpoints/peer-<id>-it<N>.npz` holds the parameters (all model variables), the optimizer's variables, the
iteration, the training time and evaluation time so far, and the samples trained on; the last `KEEP` are kept, each
written whole under a temporary name and then renamed, so a peer killed mid-write leaves the previous one intact.

What is not kept, and why: the exchange's per-link residuals and the gossip's push-sum state restart from the
checkpointed parameters (residuals from zero, push-sum with weight 1 and x = the parameters): every peer restarts
them at once, so the network is again in the state push-sum starts from, exact, at the cost of the few rounds of
compressed updates still owed. The batching stage re-measures rates, the sampler reshuffles.

All peers resume at one common iteration (`common_iteration`: the latest that every peer has), or the exchange and
evaluation rounds would never line up again; peers are never more than a checkpoint period apart, and two are kept.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

KEEP = 2
_NAME = re.compile(r"peer-(\d+)-it(\d+)\.npz$")


def directory(out_dir) -> Path:
    return Path(out_dir) / "checkpoints"


def path(out_dir, peer_id: int, iteration: int) -> Path:
    return directory(out_dir) / f"peer-{peer_id}-it{iteration}.npz"


def iterations(out_dir, peer_id: int) -> list[int]:
    """The iterations peer `peer_id` has checkpoints of, in increasing order."""
    found = []
    for file in directory(out_dir).glob(f"peer-{peer_id}-it*.npz"):
        match = _NAME.match(file.name)
        if match and int(match.group(1)) == peer_id:
            found.append(int(match.group(2)))
    return sorted(found)


def latest(out_dir, peer_id: int) -> int | None:
    """The latest iteration a peer has a checkpoint of, or None."""
    return max(iterations(out_dir, peer_id), default=None)


def common_iteration(out_dir, peer_ids) -> int | None:
    """The latest iteration every peer has a checkpoint of, or None if there is none."""
    shared = None
    for peer_id in peer_ids:
        mine = set(iterations(out_dir, peer_id))
        shared = mine if shared is None else shared & mine
    return max(shared) if shared else None


def save(out_dir, peer_id: int, iteration: int, params: np.ndarray, optimizer: list[np.ndarray], train_s: float,
         eval_s: float, samples: int) -> Path:
    """Write one checkpoint and drop all but the last KEEP of this peer."""
    target = path(out_dir, peer_id, iteration)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.npz")
    np.savez(partial, params=params, iteration=iteration, train_s=train_s, eval_s=eval_s, samples=samples,
             optimizer_count=len(optimizer), **{f"optimizer_{i}": a for i, a in enumerate(optimizer)})
    os.replace(partial, target)
    for old in iterations(out_dir, peer_id)[:-KEEP]:
        path(out_dir, peer_id, old).unlink(missing_ok=True)
    return target


def load(out_dir, peer_id: int, iteration: int) -> dict:
    """A checkpoint as a dict (params, optimizer, iteration, train_s, eval_s, samples); ValueError if missing."""
    file = path(out_dir, peer_id, iteration)
    if not file.is_file():
        raise ValueError(f"peer {peer_id} has no checkpoint of iteration {iteration} in {directory(out_dir)} "
                         f"(it has {iterations(out_dir, peer_id) or 'none'})")
    with np.load(file, allow_pickle=False) as npz:
        return {"params": npz["params"], "iteration": int(npz["iteration"]), "train_s": float(npz["train_s"]),
                "eval_s": float(npz["eval_s"]), "samples": int(npz["samples"]),
                "optimizer": [npz[f"optimizer_{i}"] for i in range(int(npz["optimizer_count"]))]}
