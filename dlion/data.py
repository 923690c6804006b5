"""Fashion-MNIST IDX loader, a synthetic set for tests, per-peer partitions and a batch sampler.

numpy only: peers, the launcher and the tests import this without paying for TensorFlow.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
PARTITION_KINDS = ("iid", "dirichlet", "label-sorted")

_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UINT8 = 0x08
_SHARDS_PER_PEER = 2  # label-sorted: each peer gets this many contiguous label shards
_MIN_SHARE = 0.01  # dirichlet: every peer keeps at least this fraction of an even share


class DataError(Exception):
    """A data file or directory is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Dataset:
    """Samples [N, ...] (images [N, H, W, C]), uint8 0-255 as files store them or float32 (the synthetic set: in
    [0, 1]); the trainer takes either, scaling uint8 batch by batch. Labels int32 [N]. The test split may be empty."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_idx(path) -> np.ndarray:
    """Parse one uint8 IDX file (gzip detected by its magic bytes) into a read-only array of its dims."""
    path = Path(path)
    try:
        buf = path.read_bytes()
        if buf[:2] == _GZIP_MAGIC:
            buf = gzip.decompress(buf)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic {buf[:4].hex()})")
    if buf[2] != _IDX_UINT8:
        raise DataError(f"{path}: unsupported IDX dtype code 0x{buf[2]:02x} (only 0x08 uint8)")
    ndim = buf[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(buf) < header:
        raise DataError(f"{path}: bad IDX header ({ndim} dims, {len(buf)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(buf, ">u4", ndim, 4))
    expected = int(np.prod(dims))
    if len(buf) - header != expected:
        raise DataError(f"{path}: dims {dims} need {expected} data bytes, file has {len(buf) - header}")
    return np.frombuffer(buf, np.uint8, expected, header).reshape(dims)


def _find(data_dir: Path, base: str) -> Path | None:
    for name in (base + ".gz", base):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def require_fashion_mnist(data_dir=DEFAULT_DATA_DIR) -> dict[str, Path]:
    """The four IDX files of `data_dir`, or a DataError naming what is missing, the package and the config key."""
    data_dir = Path(data_dir)
    paths = {key: _find(data_dir, base) for key, base in _FILES.items()}
    missing = [_FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {data_dir}: missing {', '.join(missing)}. Install the Debian package "
            f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set training.data_dir to a "
            f"directory holding the standard IDX files")
    return paths


def load_fashion_mnist(data_dir=DEFAULT_DATA_DIR) -> Dataset:
    """Load the four standard IDX files of a directory (Fashion-MNIST or any MNIST-format set). Images stay uint8:
    converting all 60,000 to float32 up front cost each peer ~1.5 CPU-s at start-up and 188 MB, for the part of them
    it trains on."""
    paths = require_fashion_mnist(data_dir)
    arrays = {}
    for split in ("train", "test"):
        x, y = load_idx(paths["x_" + split]), load_idx(paths["y_" + split])
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{data_dir}: {split} images {x.shape} and labels {y.shape} do not match")
        arrays["x_" + split] = x[..., None]
        arrays["y_" + split] = y.astype(np.int32)
    return Dataset(**arrays)


def synthetic(n_train=2000, n_test=500, seed=0) -> Dataset:
    """Small learnable 10-class set with Fashion-MNIST shapes: a fixed random pattern per class plus noise."""
    rng = np.random.default_rng(seed)
    patterns = (rng.random((10, 28, 28, 1)) < 0.3).astype(np.float32)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.int32)
        x = 0.6 * patterns[y] + rng.normal(0.2, 0.25, (n, 28, 28, 1))
        return np.clip(x, 0.0, 1.0).astype(np.float32), y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return Dataset(x_train, y_train, x_test, y_test)


def partition(labels, num_peers, kind, seed, alpha=0.5, fraction=0.8) -> list[np.ndarray]:
    """Split sample indices into num_peers disjoint, covering, sorted index arrays; deterministic per seed.

    iid: even random split. dirichlet: per class, Dirichlet(alpha) proportions over peers (small alpha = skewed).
    label-sorted: `fraction` of every class is sorted by label and dealt as contiguous shards (a few classes per
    peer), the rest is spread IID.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if num_peers < 1 or n < num_peers:
        raise ValueError(f"cannot split {n} samples over {num_peers} peers")
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = np.array_split(rng.permutation(n), num_peers)
    elif kind == "dirichlet":
        if alpha <= 0:
            raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
        parts = _dirichlet(labels, num_peers, alpha, rng)
    elif kind == "label-sorted":
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"label-sorted fraction must be in [0, 1], got {fraction}")
        parts = _label_sorted(labels, num_peers, fraction, rng)
    else:
        raise ValueError(f"unknown partition kind {kind!r}; expected one of {', '.join(PARTITION_KINDS)}")
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(labels, num_peers, alpha, rng):
    parts = [[] for _ in range(num_peers)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(num_peers, alpha)))[:-1] * len(idx)).astype(int)
        for p, chunk in enumerate(np.split(idx, cuts)):
            parts[p].append(chunk)
    parts = [rng.permutation(np.concatenate(p)) for p in parts]
    # A peer with (almost) no data would stall or skew the run: top it up from the largest peer.
    minimum = max(1, int(np.ceil(_MIN_SHARE * len(labels) / num_peers)))
    while True:
        sizes = [len(q) for q in parts]
        p, donor = int(np.argmin(sizes)), int(np.argmax(sizes))
        if sizes[p] >= minimum:
            return parts
        give = min(minimum - sizes[p], sizes[donor] - minimum)  # >= 1 because n >= num_peers * minimum
        parts[p] = np.concatenate([parts[p], parts[donor][:give]])
        parts[donor] = parts[donor][give:]


def _label_sorted(labels, num_peers, fraction, rng):
    sorted_pool, iid_pool = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        sorted_pool.append(idx[:k])
        iid_pool.append(idx[k:])
    shards = np.array_split(np.concatenate(sorted_pool), num_peers * _SHARDS_PER_PEER)
    order = rng.permutation(len(shards)).reshape(num_peers, _SHARDS_PER_PEER)
    spread = np.array_split(rng.permutation(np.concatenate(iid_pool)), num_peers)
    return [np.concatenate([shards[s] for s in order[p]] + [spread[p]]) for p in range(num_peers)]


class BatchSampler:
    """Draws batches of indices epoch by epoch: no repeat within an epoch, reshuffled at each epoch end."""

    def __init__(self, indices, seed):
        self._indices = np.asarray(indices)
        if self._indices.ndim != 1 or len(self._indices) == 0:
            raise ValueError("BatchSampler needs a non-empty 1-d index array")
        self._rng = np.random.default_rng(seed)
        self._perm = self._rng.permutation(self._indices)
        self._pos = 0
        self._drawn = 0

    def next(self, batch_size) -> np.ndarray:
        """The next batch_size indices; a batch crossing an epoch end is completed from the next permutation."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pieces, need = [], batch_size
        while need:
            if self._pos == len(self._perm):
                self._perm = self._rng.permutation(self._indices)
                self._pos = 0
            take = min(need, len(self._perm) - self._pos)
            pieces.append(self._perm[self._pos:self._pos + take])
            self._pos += take
            need -= take
        self._drawn += batch_size
        return pieces[0].copy() if len(pieces) == 1 else np.concatenate(pieces)

    @property
    def epochs(self) -> float:
        """Passes over the local data so far (samples drawn / local size)."""
        return self._drawn / len(self._indices)


def eval_subset(n_test, size=2000, seed=0) -> np.ndarray:
    """Fixed sorted subset of test indices: the same seed gives every peer the same evaluation set."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_test, min(size, n_test), replace=False))


def with_validation(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A dataset without a test split, with `fraction` of its training samples moved into one."""
    train, validation = holdout_split(np.arange(len(dataset.y_train)), fraction, seed)
    if len(validation) == 0 or len(train) == 0:
        raise DataError(f"{len(dataset.y_train)} samples are too few to hold {fraction:.0%} out for evaluation")
    return Dataset(dataset.x_train[train], dataset.y_train[train], dataset.x_train[validation],
                   dataset.y_train[validation])


def holdout_split(indices, fraction, seed) -> tuple[np.ndarray, np.ndarray]:
    """Split a peer's indices into (train, holdout); the holdout slice is never trained on (quality scores)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(np.asarray(indices))
    k = int(round(fraction * len(perm)))
    return np.sort(perm[k:]), np.sort(perm[:k])
