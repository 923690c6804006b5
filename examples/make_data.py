#!/usr/bin/env python3
"""Seeded, learnable stand-in for CIFAR-10 (32x32 colour images, 10 classes), one .npz file per peer.

    python3 examples/make_data.py [--out examples/data] [--peers 3] [--train 3000] [--test 1000] [--seed 0]

No dataset can be downloaded on the machines this project runs on, so the worked example makes its own: each class is
a smooth random colour pattern, and every image is its class's pattern, shifted by a few pixels, at a random
contrast, under noise: a convolutional net learns it in a minute, a linear model does not get far. Each peer's file
holds x_train, y_train (its own samples, uint8 [N, 32, 32, 3] and int labels) and x_test, y_test (drawn from the same
distribution). A real CIFAR-10 in the same layout (`np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)`)
drops in for any peer's file.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIZE, CHANNELS, CLASSES = 32, 3, 10
SHIFT = 3  # pixels an image may be moved by


def patterns(rng: np.random.Generator) -> np.ndarray:
    """One smooth colour pattern per class, [CLASSES, SIZE + 2 SHIFT, SIZE + 2 SHIFT, CHANNELS] in [0, 1]."""
    coarse = rng.random((CLASSES, 6, 6, CHANNELS))
    side = SIZE + 2 * SHIFT
    grid = np.linspace(0, 5, side)
    lo = np.floor(grid).astype(int).clip(0, 4)
    frac = (grid - lo)[:, None]
    rows = coarse[:, lo] * (1 - frac[None, :, :, None]) + coarse[:, lo + 1] * frac[None, :, :, None]
    frac_c = (grid - lo)[None, None, :, None]
    return rows[:, :, lo] * (1 - frac_c) + rows[:, :, lo + 1] * frac_c


def images(rng: np.random.Generator, templates: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, CLASSES, n)
    dx, dy = rng.integers(0, 2 * SHIFT + 1, (2, n))
    crops = np.stack([templates[c, y:y + SIZE, x:x + SIZE] for c, x, y in zip(labels, dx, dy)])
    contrast = rng.uniform(0.5, 1.0, (n, 1, 1, 1))
    noisy = 0.5 + contrast * (crops - 0.5) + rng.normal(0, 0.12, crops.shape)
    return (np.clip(noisy, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="examples/data")
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--train", type=int, default=3000, help="training images per peer")
    parser.add_argument("--test", type=int, default=1000, help="test images per peer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    templates = patterns(np.random.default_rng(args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for peer in range(args.peers):
        rng = np.random.default_rng([args.seed, peer + 1])
        x_train, y_train = images(rng, templates, args.train)
        x_test, y_test = images(rng, templates, args.test)
        path = out / f"peer-{peer}.npz"
        np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        print(f"{path}: {len(y_train)} training and {len(y_test)} test images {x_train.shape[1:]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
