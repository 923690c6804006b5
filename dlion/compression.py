"""Compression of flat vectors on the wire: exact top-k, per-link error feedback, and the half-precision policy.

The gradient plane (`exchange.prioritized`, `exchange.gaia`, `exchange.ako`) and the model plane
(`gossip.sparse_push`) send some entries of a vector (the largest, the significant, a partition) and keep the rest for
later; these are the pieces they share.
"""
from __future__ import annotations

import math

import numpy as np

from dlion.transport.wire import Sparse

SAMPLE_STRIDE = 64  # top-k threshold from every 64th magnitude, then an exact pass over the candidates
HALF_MAX = float(np.finfo(np.float16).max)
HALF_ROUNDING = 2.0 ** -11  # float16's relative rounding error, at most


def top_k_indices(magnitudes: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the `k` largest entries of `magnitudes` (exact; among equal entries the first ones), in
    about two passes over the vector and none of sorting: the k-th largest is found among the candidates, and the
    candidates are already in index order."""
    n = magnitudes.size
    if k >= n:
        return np.arange(n, dtype=np.uint32)
    if k <= 0:
        return np.zeros(0, np.uint32)
    sample = magnitudes[::SAMPLE_STRIDE]
    # a threshold a little below the sample's k-th largest keeps >= k candidates almost always; check anyway
    want = min(sample.size, math.ceil(k * sample.size / n * 1.5) + 1)
    threshold = np.partition(sample, sample.size - want)[sample.size - want]
    candidates = np.flatnonzero(magnitudes >= threshold)
    if candidates.size < k:
        candidates = np.arange(n)
    values = magnitudes[candidates]
    kth = np.partition(values, values.size - k)[values.size - k]
    keep = values > kth
    if short := k - int(np.count_nonzero(keep)):
        keep[np.flatnonzero(values == kth)[:short]] = True
    return candidates[keep].astype(np.uint32)


class LinkResidual:
    """Error feedback for one link: what was not sent yet. Sent plus residual equals everything put in, exactly."""

    def __init__(self, size: int):
        self.residual = np.zeros(size, np.float32)

    def add(self, vector: np.ndarray) -> None:
        """Keep all of `vector` for later."""
        self.residual += vector

    def take(self, vector: np.ndarray, k: int, half: bool = False) -> np.ndarray | Sparse:
        """Add `vector`, remove and return the `k` largest entries (all of them, densely, if that is not larger);
        with `half`, rounded to float16 where they fit (`rounded`): what rounding leaves stays in the residual."""
        self.add(vector)
        if 2 * k >= self.residual.size:
            sent = rounded(self.residual, half)
            self.residual -= sent  # exact: a float32 minus its float16 rounding is a float32
            return sent
        return self.take_at(top_k_indices(np.abs(self.residual), k), half)

    def take_at(self, indices: np.ndarray, half: bool = False) -> Sparse:
        """Remove and return the entries at `indices` (strictly increasing uint32), whichever rule picked them; with
        `half` as in `take`."""
        values = rounded(self.residual[indices], half)
        self.residual[indices] -= values
        return Sparse(indices, values, self.residual.size)


def rounded(values: np.ndarray, half: bool) -> np.ndarray:
    """`values` to send: a float16 copy with `half` if every entry fits float16, else a float32 copy."""
    return values.astype(np.float16 if half and fits_half(values) else np.float32)


def fits_half(values: np.ndarray) -> bool:
    """Whether every entry is representable in float16 without overflow."""
    return values.size == 0 or float(np.abs(values).max()) < HALF_MAX


def half_when_coarse(values: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """New values for entries that held `previous`: float16 while rounding adds under a tenth of the change they make
    (sum of |v| 2^-11 against the sum of |v - previous|), float32 once the changes get that small (as when the peers
    agree, so consensus stays exact) or a value would overflow float16."""
    magnitude = np.abs(values)
    if (magnitude.size and magnitude.max() < HALF_MAX
            and HALF_ROUNDING * magnitude.sum() < 0.1 * np.abs(values - previous).sum()):
        return values.astype(np.float16)
    return values.astype(np.float32)
