"""The norm guard: a received gradient or model is compared with what this peer itself sends of the same kind.

Finite values and declared ranges are checked when a message arrives (`dlion.messages`); a finite poison (a gradient
of 1e10 everywhere) passes those, so its size is judged against this peer's own: the transport records the RMS of
every tensor it sends, per (kind, tensor, dense or sparse), and a received tensor whose L2 norm exceeds `ratio` times
the reference is rejected; the reference is the largest, over dense and sparse, of the medians of this peer's last
`HISTORY` norms of that tensor (a top-k never has more norm than the vector it was taken from, so a dense reference
bounds sparse messages, whatever their k). Why this rule: honest peers train the same model on data of the same task,
so their gradients and parameters have magnitudes within a small factor of each other (batch sizes change a
gradient's noise, by the square root of their ratio), while a poison must be large to do harm; the median of the
peer's own recent figures follows training (gradients shrink as it converges) and cannot be moved by others. The
guard judges a message when a stage takes it, after the peer's own message of the round went out, so a reference
exists; a tensor is also compared with the same tensor of a related kind (every kind that carries whole parameters:
`PARAMETER_KINDS`), mass owed on a gossip link with the model, and a tensor passes only where no (nonzero) reference
exists (the knowledge stage and AD-PSGD record their own parameters before they take a model).
"""
from __future__ import annotations

import math
import threading
from collections import defaultdict, deque

import numpy as np

from dlion import messages

from .wire import Message, Sparse

HISTORY = 16
# kinds whose "x" is the sender's whole parameters: each is judged against all of them (related kinds)
PARAMETER_KINDS = frozenset({messages.GOSSIP, messages.MODEL, messages.AVERAGE_REQUEST, messages.AVERAGE_REPLY,
                             messages.FINAL_MODEL})
GUARDED = frozenset({messages.GRAD}) | PARAMETER_KINDS


def _related(kind: str) -> frozenset[str]:
    return PARAMETER_KINDS if kind in PARAMETER_KINDS else frozenset({kind})


def norm(tensor: np.ndarray | Sparse) -> float:
    """L2 norm of a tensor's entries (a sparse tensor's sent values), in float32 (a float64 copy of a model costs a
    hundred times the dot product): a norm beyond float32's range comes out infinite, which no bound admits."""
    values = tensor.values if isinstance(tensor, Sparse) else tensor
    values = np.asarray(values).reshape(-1).astype(np.float32, copy=False)
    with np.errstate(over="ignore"):
        return math.sqrt(float(np.dot(values, values)))


def _key(kind: str, name: str, tensor) -> tuple[str, str, bool]:
    return kind, name, isinstance(tensor, Sparse)


class NormGuard:
    """Thread-safe: `observe` from the sending thread, `problem` from the stages'."""

    def __init__(self, ratio: float):
        self.ratio = ratio
        self._own: dict[tuple[str, str, bool], deque] = defaultdict(lambda: deque(maxlen=HISTORY))
        self._lock = threading.Lock()

    def observe(self, kind: str, tensors) -> None:
        """Record the norms of a message this peer sends (or of its own parameters, for a kind it only receives)."""
        if kind not in GUARDED:
            return
        figures = {_key(kind, name, t): norm(t) for name, t in (tensors or {}).items()}
        with self._lock:
            for key, value in figures.items():
                self._own[key].append(value)

    def reference(self, kind: str, name: str) -> float | None:
        """The norm a received (kind, name) tensor is compared with (module docstring), or None if there is none."""
        names = {name, "x"} if name == "owed" else {name}  # mass owed on a link is a share of the model's
        with self._lock:
            medians = [float(np.median(self._own[key])) for k in _related(kind) for n in names
                       for key in ((k, n, False), (k, n, True)) if self._own.get(key)]
        return max(medians) if medians else None

    def problem(self, msg: Message) -> str | None:
        """Why `msg` is too large to use (None if it is not, or if it carries nothing guarded)."""
        if msg.kind not in GUARDED:
            return None
        for name, tensor in msg.tensors.items():
            reference = self.reference(msg.kind, name)
            if not reference:  # none yet, or this peer's own are all zero: no scale to judge by
                continue
            value = norm(tensor)
            if value > self.ratio * reference:
                return f"'{name}' norm {value:.3g} exceeds {self.ratio:g} x this peer's own ({reference:.3g})"
        return None
