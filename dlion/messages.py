"""Every message kind a peer sends, with its metadata and tensors, declared once and checked in one place.

The transport checks each inbound message against its kind's declaration (`problem`) before filing it, so a stage
only ever sees metadata of the declared types and ranges, and finite tensors; what depends on the stage's own state
(a vector's length, a sequence number's progress) the stage checks itself. A message that fails is dropped and
counted by kind and reason. Control kinds also declare how often one peer may send them (`Kind.rate`): a peer that
sends more is not one running this code, and its excess is dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

HELLO = "hello"      # the start-up barrier: who has heard from whom, the sender's round and expected rate (0: none)
BYE = "bye"          # the last message on a connection
STOP = "stop"        # the peers' mean evaluation accuracy reached the target, with the figures it rests on
EVAL = "eval"        # a peer's evaluation accuracy at an evaluation round
GRAD = "grad"        # gradient plane: a (sparse) gradient and its batch weight
REPORT = "report"    # weighted batching: a peer's measured compute rate
GOSSIP = "gossip"    # model plane: push-sum mass and weight
SCORE = "score"      # knowledge transfer: a peer's loss on its held-out data
FETCH = "fetch"      # knowledge transfer: send me your parameters
MODEL = "model"      # knowledge transfer: the parameters asked for
CREDIT = "credit"    # model plane: the push-sum weight a receiver has used from a link so far
AVERAGE_REQUEST = "avg-request"  # model plane (AD-PSGD): average your model with mine, and send me yours
AVERAGE_REPLY = "avg-reply"      # model plane (AD-PSGD): my model before I averaged it with your request's
REJOIN = "rejoin"    # a restarted peer asks for the parameters to continue from (answered with a model)
BACK = "back"        # a rejoining peer takes part in rounds again from round `at` on
OPTIMIZER = "optimizer"  # with a rejoin answer: the answering peer's round and optimizer state (o; n: its scalars)
FINAL_MODEL = "final-model"  # the final average: the sender's parameters and push-sum weight (`dlion.consensus`)
LABEL_COUNTS = "label-counts"  # the classifier refit: the sender's training label counts (`dlion.classifier`)
CLASS_STATS = "class-stats"  # the classifier refit: the sender's per-class feature statistics
REPLICA = "replica"  # one slice of the sender's state, for the replica its holder keeps (`dlion.replica`)
REPLICA_REQUEST = "replica-request"  # a restarted peer asks what replica of its state a peer holds, or for the replica
REPLICA_OFFER = "replica-offer"  # the replica held of the asking peer is complete: the round of its oldest slice
REPLICA_STATE = "replica-state"  # the replica held of the asking peer: its parameters and optimizer state
PROBE = "probe"      # link measurement (scripts/check_emulation.py): payload or ping
ACK = "ack"          # link measurement: the answer to a probe


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v: Any) -> bool:
    return isinstance(v, float) and math.isfinite(v)


def positive_float(v: Any) -> bool:
    return _is_float(v) and v > 0


def fraction(v: Any) -> bool:
    return _is_float(v) and 0.0 <= v <= 1.0


def finite_float(v: Any) -> bool:
    return _is_float(v)


def non_negative_float(v: Any) -> bool:
    return _is_float(v) and v >= 0


def count(v: Any) -> bool:
    """An integer >= 1."""
    return _is_int(v) and v >= 1


def peer_list(v: Any) -> bool:
    """Comma-separated peer ids ("" for none): meta is flat, so lists travel as strings."""
    return isinstance(v, str) and all(ascii_digits(p) for p in v.split(",") if p) and len(v) < 4096


def ascii_digits(text: str) -> bool:
    """A non-negative integer in ASCII digits (str.isdigit alone also takes '²', which int() refuses)."""
    return text.isascii() and text.isdigit()


def figure_list(v: Any) -> bool:
    """Comma-separated `peer:round:accuracy` triples, each accuracy a fraction (a stop's evidence: the newest
    figure of each peer it rests on)."""
    return isinstance(v, str) and len(v) < 4096 and parse_figures(v) is not None


def parse_figures(text: str) -> dict[int, tuple[int, float]] | None:
    """{peer: (round, accuracy)} from `figure_list` text, or None if it is not one (no repeated peer, rounds as
    `round_number`, accuracies in [0, 1])."""
    figures = {}
    for item in text.split(","):
        fields = item.split(":")
        if len(fields) != 3 or not ascii_digits(fields[0]) or not ascii_digits(fields[1]):
            return None
        peer, round_ = int(fields[0]), int(fields[1])
        try:
            value = float(fields[2])
        except ValueError:
            return None
        if peer in figures or not round_number(round_) or not 0.0 <= value <= 1.0:
            return None
        figures[peer] = (round_, value)
    return figures


def format_figures(figures: Mapping[int, tuple[int, float]]) -> str:
    return ",".join(f"{p}:{round_}:{acc!r}" for p, (round_, acc) in sorted(figures.items()))


def flag(v: Any) -> bool:
    """0 or 1 (meta is flat and typed: a yes or no travels as an integer)."""
    return _is_int(v) and v in (0, 1)


def round_number(v: Any) -> bool:
    """A round (iteration) number: an integer >= 0 that fits 63 bits."""
    return _is_int(v) and 0 <= v < 1 << 63


def epoch(v: Any) -> bool:
    """A link epoch: an integer >= 0 that fits 63 bits."""
    return _is_int(v) and 0 <= v < 1 << 63


@dataclass(frozen=True)
class Kind:
    """What a kind carries: required metadata (name -> check), the tensors it must and may have, and, for control
    kinds, at most how many one sender may send per second (`rate`, with bursts of `burst`; None: unlimited)."""

    meta: dict[str, Callable[[Any], bool]] = field(default_factory=dict)
    tensors: frozenset[str] = frozenset()
    optional_tensors: frozenset[str] = frozenset()
    rate: float | None = None
    burst: int = 1
    batch_weight: str | None = None  # the meta key that is a batch weight: at most the global batch


KINDS: dict[str, Kind] = {
    HELLO: Kind({"heard": peer_list, "at": round_number, "rate": non_negative_float}, rate=20.0, burst=40),  # 10/s
    BYE: Kind(rate=0.2, burst=2),
    STOP: Kind({"figures": figure_list}, rate=2.0, burst=4),
    EVAL: Kind({"acc": fraction}, rate=50.0, burst=50),
    GRAD: Kind({"w": positive_float}, frozenset({"g"}), batch_weight="w"),
    REPORT: Kind({"rate": positive_float}),
    GOSSIP: Kind({"n": count, "w": positive_float, "e": epoch}, frozenset({"x"}), frozenset({"owed"})),
    CREDIT: Kind({"w": positive_float, "e": epoch}),
    AVERAGE_REQUEST: Kind({}, frozenset({"x"})),  # numbered by the requester's round
    AVERAGE_REPLY: Kind({}, frozenset({"x"})),    # numbered by the round of the request it answers
    SCORE: Kind({"loss": non_negative_float}, rate=50.0, burst=50),  # a cross-entropy
    FETCH: Kind(rate=5.0, burst=5),
    REJOIN: Kind(rate=1.0, burst=2),
    BACK: Kind({"at": round_number}, rate=1.0, burst=2),
    MODEL: Kind({}, frozenset({"x"})),
    FINAL_MODEL: Kind({"w": positive_float}, frozenset({"x"}), rate=1.0, burst=2),
    LABEL_COUNTS: Kind({}, frozenset({"h"}), rate=1.0, burst=2),
    CLASS_STATS: Kind({}, frozenset({"c", "n", "m", "s"}), rate=1.0, burst=2),  # classes, counts, means, spreads
    OPTIMIZER: Kind({"at": round_number, "train_s": non_negative_float}, frozenset({"o"}), frozenset({"n"}), rate=1.0,
                    burst=2),
    # a slice i of `of` of a state of `size` entries (the first `p` are parameters), dense or the difference from the
    # message `base` of link epoch e (sequence number n); w: the sender's push-sum weight
    REPLICA: Kind({"e": epoch, "n": count, "base": round_number, "i": round_number, "of": count, "size": count,
                   "p": count, "w": positive_float}, frozenset({"d"})),
    REPLICA_REQUEST: Kind({"whole": flag}, rate=2.0, burst=4),  # whole 0: an offer, 1: the replica itself
    REPLICA_OFFER: Kind({"at": round_number, "w": positive_float}, rate=2.0, burst=4),
    REPLICA_STATE: Kind({"at": round_number, "w": positive_float}, frozenset({"p", "o"}), rate=1.0, burst=2),
    PROBE: Kind({}, frozenset(), frozenset({"payload"})),
    ACK: Kind(),
}


ANNOUNCEMENTS = frozenset({HELLO, REJOIN, REPLICA_REQUEST})  # sent before a peer takes part in rounds again: they do not re-admit it
# kinds stages collect (or drain) round by round: every message counts, none is evicted
COLLECTED = frozenset({GRAD, GOSSIP, AVERAGE_REQUEST, AVERAGE_REPLY, REPLICA})
# what a round's stages send: while a peer holds its round's messages, these leave together, one message per link
# (`transport.outbox`); the others (barrier, rejoin, state transfers, knowledge transfer) go at once
BUNDLED = frozenset({GRAD, GOSSIP, CREDIT, REPLICA, REPORT, EVAL, SCORE, STOP, AVERAGE_REQUEST, AVERAGE_REPLY})
# filed whatever their round (no window), as a slower peer needs them from a faster one's rounds: evaluation figures
# (tiny, rate-limited and held for the last rounds only) and AD-PSGD's requests (peers run at their own speeds; each
# is drained the next round, and a sender's held bytes are bounded)
UNWINDOWED = frozenset({EVAL, AVERAGE_REQUEST})


class Rejection(NamedTuple):
    """Why a message was dropped: a short `reason` to count by, and the `detail` to log."""

    reason: str
    detail: str


def problem(kind: str, meta: dict, tensors: Mapping[str, Any], max_batch_weight: float = math.inf) -> Rejection | None:
    """Why a message of `kind` with this metadata and these tensors (arrays or `wire.Sparse`) is not as declared:
    keys, types and ranges, batch weights up to `max_batch_weight`, finite tensors. None if it is."""
    declared = KINDS.get(kind)
    if declared is None:
        return Rejection("unknown kind", f"unknown kind {kind!r}")
    if meta.keys() != declared.meta.keys():
        return Rejection("meta", f"{kind}: expected meta keys {sorted(declared.meta)}, got {sorted(meta)}")
    for key, check in declared.meta.items():
        if not check(meta[key]):
            return Rejection("meta", f"{kind}: meta {key}={meta[key]!r} is out of range or of the wrong type")
    if declared.batch_weight is not None and meta[declared.batch_weight] > max_batch_weight:
        return Rejection("batch weight", f"{kind}: batch weight {meta[declared.batch_weight]!r} exceeds the global "
                                         f"batch {max_batch_weight:g}")
    names = set(tensors)
    if not declared.tensors <= names <= declared.tensors | declared.optional_tensors:
        return Rejection("tensors", f"{kind}: expected tensors {sorted(declared.tensors)} (optional "
                                    f"{sorted(declared.optional_tensors)}), got {sorted(names)}")
    for name, tensor in tensors.items():
        values = getattr(tensor, "values", tensor)  # a Sparse's values, or the array itself
        if np.asarray(values).dtype.kind == "f" and not np.isfinite(values).all():
            return Rejection("non-finite", f"{kind}: non-finite entries in {name!r}")
    return None
