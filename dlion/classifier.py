"""Classifier refit (`rounds.classifier_refit`): once training is over, the last layer is refitted on features drawn
from the peers' shared per-class feature statistics, as CCVR does (Luo et al., "No Fear of Heterogeneity", 2021).

Why: on label-skewed data, rounds of local steps leave the model's body nearly as good as on IID data, but its last
layer leans towards the classes the peers trained on most (docs/benchmarks.md, "Skewed data"). The last layer is a
softmax regression on the body's features; what it needs from the data is each class's feature distribution, which a
peer can share without its samples: the count, mean and covariance of its features per class.

Two exchanges, each waiting at most the timeout for the live peers. First every peer sends its label counts; from
those it has, each computes the label skew: the largest total-variation distance between a peer's label distribution
and the union's. With `when-skewed`, below `SKEW_THRESHOLD` (IID splits sit far below it, a Dirichlet-0.1 or
label-sorted split far above) the trained layer stays: on IID data it is as good as a refitted one, and the
statistics would cost a model's bytes per link. Otherwise each peer computes, with the trained (final-averaged) body,
the features of at most `SAMPLES_PER_CLASS` of its training samples per class, and sends their statistics. Each
combines the statistics it has (its own and those that came in time) into one Gaussian per class, draws
`VIRTUAL_PER_CLASS` features of every class any peer holds, and refits the last layer's kernel and bias on them with
Adam, from the trained layer. Every class is drawn alike, so the refitted layer treats the classes as balanced, as
the test set is. The draws are seeded by the config's seed: peers that combined the same statistics end with the
same layer.

Covariances are full where the statistics of every class fit in one model's size (what the final average sends),
diagonal otherwise. Received counts and statistics are checked before use: label counts of the model's classes,
statistics' classes in range and distinct, counts at most the sender's cap, and every class's mean and spread within
the norm guard's ratio of this peer's own largest (a sender cannot move a class far by claiming extreme features); a
message that fails is dropped and counted. Claimed label counts can make the peers refit on IID data (which costs
a few tenths of a point), but cannot hide a skew: where two honest peers' label distributions are 2 x the threshold
apart, one of them is at least the threshold from any union (the triangle inequality).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlion import messages
from dlion.consensus import gather
from dlion.stages import StageContext

SKEW_THRESHOLD = 0.1      # label skew (total variation) from which `when-skewed` refits
SAMPLES_PER_CLASS = 300   # training samples per class whose features a peer summarises
VIRTUAL_PER_CLASS = 500   # features drawn per class for the refit
STEPS, BATCH, LEARNING_RATE = 1000, 500, 1e-2  # the refit's Adam steps over the drawn features


@dataclass(frozen=True)
class ClassStats:
    """Per-class feature statistics over `classes` (distinct, increasing): sample counts, means [k, d] and
    covariances [k, d, d] (full) or variances [k, d] (diagonal)."""

    classes: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    @property
    def full(self) -> bool:
        return self.covariances.ndim == 3

    def tensors(self) -> dict[str, np.ndarray]:
        """The statistics as a message's tensors: float32 values, a full covariance as its upper triangle (row by
        row, [k, d(d+1)/2])."""
        spread = self.covariances[(slice(None), *np.triu_indices(self.means.shape[1]))] if self.full \
            else self.covariances
        return {"c": self.classes.astype(np.int64), "n": self.counts.astype(np.int64),
                "m": self.means.astype(np.float32), "s": spread.astype(np.float32)}

    @classmethod
    def from_tensors(cls, tensors: dict, full: bool) -> ClassStats:
        """What `tensors` gave (shapes as `problem` checks them)."""
        means, spread = np.asarray(tensors["m"], np.float64), np.asarray(tensors["s"], np.float64)
        if full:
            k, d = means.shape
            upper = np.zeros((k, d, d))
            upper[(slice(None), *np.triu_indices(d))] = spread
            spread = upper + np.triu(upper, 1).transpose(0, 2, 1)
        return cls(np.asarray(tensors["c"]), np.asarray(tensors["n"]), means, spread)


def summarise(features: np.ndarray, labels: np.ndarray, full: bool) -> ClassStats:
    """The statistics of these features (rows) by label."""
    features = np.asarray(features, np.float64)
    classes = np.unique(labels)
    counts, means, covariances = [], [], []
    for c in classes:
        f = features[labels == c]
        mean = f.mean(axis=0)
        centred = f - mean
        counts.append(len(f))
        means.append(mean)
        covariances.append(centred.T @ centred / len(f) if full else (centred ** 2).mean(axis=0))
    return ClassStats(classes.astype(np.int64), np.array(counts, np.int64), np.array(means), np.array(covariances))


def combine(parts: list[ClassStats]) -> ClassStats:
    """The statistics of the union of the parts' samples (population moments, class by class)."""
    full = parts[0].full
    by_class: dict[int, list[tuple[float, np.ndarray, np.ndarray]]] = {}
    for part in parts:
        for c, n, m, s in zip(part.classes, part.counts, part.means, part.covariances):
            by_class.setdefault(int(c), []).append((float(n), np.asarray(m, np.float64), np.asarray(s, np.float64)))
    classes = sorted(by_class)
    counts, means, covariances = [], [], []
    for c in classes:
        items = by_class[c]
        n = sum(w for w, _, _ in items)
        mean = sum(w * m for w, m, _ in items) / n
        if full:
            second = sum(w * (s + np.outer(m, m)) for w, m, s in items) / n
            cov = second - np.outer(mean, mean)
        else:
            cov = sum(w * (s + m * m) for w, m, s in items) / n - mean * mean
        counts.append(n)
        means.append(mean)
        covariances.append(cov)
    return ClassStats(np.array(classes, np.int64), np.array(counts), np.array(means), np.array(covariances))


def label_skew(label_counts: list[np.ndarray]) -> float:
    """The largest total-variation distance between one peer's label distribution and the union's (0: the peers'
    labels are spread alike; 1: disjoint)."""
    union = np.sum(label_counts, axis=0, dtype=np.float64)
    union /= union.sum()
    return max(0.5 * float(np.abs(h / h.sum() - union).sum()) for h in label_counts)


def counts_problem(counts, num_classes: int) -> tuple[str, str] | None:
    """Why received label counts cannot be used, or None: one non-negative integer per class, not all zero."""
    counts = np.asarray(counts)
    if counts.shape != (num_classes,) or counts.dtype.kind not in "iu" or counts.min() < 0 or counts.sum() < 1:
        return "counts", f"expected {num_classes} non-negative label counts, not all zero"
    return None


def _variances(spread: np.ndarray, d: int, full: bool) -> np.ndarray:
    """Each class's variances [k, d] from a message's spreads ("s"): a packed covariance's diagonal, or themselves."""
    if not full:
        return spread
    rows, cols = np.triu_indices(d)
    return spread[:, rows == cols]


def problem(tensors: dict, own: ClassStats, num_classes: int, max_count: int, ratio: float) -> tuple[str, str] | None:
    """Why received statistics (`ClassStats.tensors`) cannot be used ((reason, detail)), or None: shapes as this
    peer's own, classes distinct and in range, counts in 1..`max_count` (a sender's weight in a class is bounded),
    variances not negative, and each class's mean norm and spread at most `ratio` (and `ratio` squared) times this
    peer's own largest."""
    c, n, m, s = (np.asarray(tensors[k]) for k in ("c", "n", "m", "s"))
    d = own.means.shape[1]
    k = len(c) if c.ndim == 1 else -1
    shape = (k, d * (d + 1) // 2) if own.full else (k, d)
    if k < 1 or c.dtype.kind not in "iu" or n.dtype.kind not in "iu" or n.shape != (k,) or m.shape != (k, d) \
            or s.shape != shape:
        return "shape", f"expected classes [k], counts [k], means [k, {d}] and spreads {list(shape)}"
    if len(np.unique(c)) != k or c.min() < 0 or c.max() >= num_classes:
        return "classes", f"expected distinct classes in 0..{num_classes - 1}"
    if n.min() < 1 or n.max() > max_count:
        return "counts", f"expected counts in 1..{max_count}"
    variances = _variances(s.astype(np.float64), d, own.full)
    if variances.min() < 0:
        return "covariance", "negative variances"
    own_variances = np.einsum("kii->ki", own.covariances) if own.full else own.covariances
    if np.linalg.norm(m.astype(np.float64), axis=1).max() > ratio * np.linalg.norm(own.means, axis=1).max() \
            or variances.sum(axis=1).max() > ratio ** 2 * max(own_variances.sum(axis=1).max(), 1e-12):
        return "norm", f"a class's mean or spread is more than {ratio:g}x this peer's own"
    return None


def draw(stats: ClassStats, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` features of every class from its Gaussian, and their labels. A full covariance is made symmetric
    and its negative eigenvalues (rounding) dropped before drawing."""
    d = stats.means.shape[1]
    features, labels = [], []
    for c, mean, cov in zip(stats.classes, stats.means, stats.covariances):
        z = rng.standard_normal((per_class, d))
        if stats.full:
            values, vectors = np.linalg.eigh((cov + cov.T) / 2)
            features.append(mean + (z * np.sqrt(np.clip(values, 0, None))) @ vectors.T)
        else:
            features.append(mean + z * np.sqrt(np.clip(cov, 0, None)))
        labels.append(np.full(per_class, c, np.int64))
    return np.concatenate(features), np.concatenate(labels)


def refit(kernel: np.ndarray, bias: np.ndarray, features: np.ndarray, labels: np.ndarray, seed: int,
          steps: int = STEPS, batch: int = BATCH, learning_rate: float = LEARNING_RATE) -> tuple[np.ndarray, np.ndarray]:
    """The last layer (kernel [d, classes], bias [classes]) after `steps` Adam steps of softmax cross-entropy on
    minibatches of these features, from the given layer."""
    rng = np.random.default_rng(seed)
    params = [kernel.astype(np.float64), bias.astype(np.float64)]
    first, second = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-7
    for t in range(1, steps + 1):
        pick = rng.integers(0, len(labels), min(batch, len(labels)))
        x, y = features[pick], labels[pick]
        logits = x @ params[0] + params[1]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        p /= len(y)
        for i, g in enumerate((x.T @ p, p.sum(axis=0))):
            first[i] = beta1 * first[i] + (1 - beta1) * g
            second[i] = beta2 * second[i] + (1 - beta2) * g * g
            step = learning_rate * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
            params[i] -= step * first[i] / (np.sqrt(second[i]) + eps)
    return params[0].astype(kernel.dtype), params[1].astype(bias.dtype)


class ClassifierRefit:
    """The end-of-training step: share label counts, and where the labels are skewed (or `always`) this peer's class
    statistics; combine the others'; refit the last layer."""

    def __init__(self, ctx: StageContext, trainer, x: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
                 num_classes: int, timeout_s: float, seed: int, always: bool = False):
        """`x[train_idx]`, `y[train_idx]`: this peer's training samples (their features are summarised, nothing else
        leaves; only the summarised ones are copied, and only when the refit runs); `always`: refit whatever the
        skew."""
        self.ctx, self.trainer, self.num_classes, self.timeout_s, self.seed = ctx, trainer, num_classes, timeout_s, seed
        self.always, self._x = always, x
        labels = y[train_idx]
        self.label_counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
        order = np.random.default_rng(seed * 7907 + ctx.peer_id).permutation(len(labels))
        picked = np.sort(np.concatenate([order[labels[order] == c][:SAMPLES_PER_CLASS] for c in np.unique(labels)]))
        self.summarised, self.y = train_idx[picked], labels[picked]

    def run(self, round_: int) -> dict:
        """Both exchanges and the refit. Returns the `refit` event's figures: the label skew, whether the layer was
        refitted, whose statistics were used and of which classes, the waits and the bytes received."""
        counts = gather(self.ctx, messages.LABEL_COUNTS, round_, {"h": self.label_counts}, self.timeout_s,
                        lambda msg: counts_problem(msg.tensors["h"], self.num_classes))
        skew = label_skew([self.label_counts] + [msg.tensors["h"] for msg in counts.messages])
        event = {"skew": round(skew, 4), "refitted": self.always or skew >= SKEW_THRESHOLD,
                 "wait_s": counts.wait_s, "bytes_received": counts.nbytes}
        if not event["refitted"]:
            return event
        kernel, bias = self.trainer.classifier()
        full = self.num_classes * kernel.shape[0] ** 2 <= self.trainer.num_params
        own = summarise(self.trainer.features(self._x[self.summarised]), self.y, full)
        ratio = self.ctx.transport.guard.ratio
        stats = gather(self.ctx, messages.CLASS_STATS, round_, own.tensors(), self.timeout_s,
                       lambda msg: problem(msg.tensors, own, self.num_classes, SAMPLES_PER_CLASS, ratio))
        # every peer combines the statistics as they travelled (its own too), in the peers' order: one layer for all
        sent = {self.ctx.peer_id: own.tensors()} | {msg.sender: msg.tensors for msg in stats.messages}
        combined = combine([ClassStats.from_tensors(sent[p], full) for p in sorted(sent)])
        features, labels = draw(combined, VIRTUAL_PER_CLASS, np.random.default_rng(self.seed))
        self.trainer.set_classifier(*refit(kernel, bias, features, labels, self.seed))
        return {**event, "peers": [msg.sender for msg in stats.messages],
                "classes": [int(c) for c in combined.classes], "covariance": "full" if full else "diagonal",
                "wait_s": round(counts.wait_s + stats.wait_s, 3), "bytes_received": counts.nbytes + stats.nbytes}
