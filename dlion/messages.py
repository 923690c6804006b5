"""Every message kind a peer sends, with its metadata and tensors, declared once and checked in one place.

The transport checks each inbound message against its kind's declaration (`problem`) before filing it, so a stage
only ever sees metadata of the declared types and ranges; what depends on the stage's own state (a vector's length,
a sequence number's progress) the stage checks itself. A message that fails is dropped and counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

HELLO = "hello"      # the start-up barrier: who has heard from whom
BYE = "bye"          # the last message on a connection
STOP = "stop"        # the peers' mean evaluation accuracy reached the target
EVAL = "eval"        # a peer's evaluation accuracy at an evaluation round
GRAD = "grad"        # gradient plane: a (sparse) gradient and its batch weight
REPORT = "report"    # weighted batching: a peer's measured compute rate
GOSSIP = "gossip"    # model plane: push-sum mass and weight
SCORE = "score"      # knowledge transfer: a peer's loss on its held-out data
FETCH = "fetch"      # knowledge transfer: send me your parameters
MODEL = "model"      # knowledge transfer: the parameters asked for
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


def count(v: Any) -> bool:
    """An integer >= 1."""
    return _is_int(v) and v >= 1


def peer_list(v: Any) -> bool:
    """Comma-separated peer ids ("" for none): meta is flat, so lists travel as strings."""
    return isinstance(v, str) and all(p.isdigit() for p in v.split(",") if p) and len(v) < 4096


@dataclass(frozen=True)
class Kind:
    """What a kind carries: required metadata (name -> check), and the tensors it must and may have."""

    meta: dict[str, Callable[[Any], bool]] = field(default_factory=dict)
    tensors: frozenset[str] = frozenset()
    optional_tensors: frozenset[str] = frozenset()


KINDS: dict[str, Kind] = {
    HELLO: Kind({"heard": peer_list}),
    BYE: Kind(),
    STOP: Kind(),
    EVAL: Kind({"acc": fraction}),
    GRAD: Kind({"w": positive_float}, frozenset({"g"})),
    REPORT: Kind({"rate": positive_float}),
    GOSSIP: Kind({"n": count, "w": positive_float}, frozenset({"x"}), frozenset({"owed"})),
    SCORE: Kind({"loss": finite_float}),
    FETCH: Kind(),
    MODEL: Kind({}, frozenset({"x"})),
    PROBE: Kind({}, frozenset(), frozenset({"payload"})),
    ACK: Kind(),
}


def problem(kind: str, meta: dict, tensor_names) -> str | None:
    """Why a message of `kind` with this metadata and these tensors is not as declared; None if it is."""
    declared = KINDS.get(kind)
    if declared is None:
        return f"unknown kind {kind!r}"
    if meta.keys() != declared.meta.keys():
        return f"{kind}: expected meta keys {sorted(declared.meta)}, got {sorted(meta)}"
    for key, check in declared.meta.items():
        if not check(meta[key]):
            return f"{kind}: meta {key}={meta[key]!r} is out of range or of the wrong type"
    names = set(tensor_names)
    if not declared.tensors <= names <= declared.tensors | declared.optional_tensors:
        return (f"{kind}: expected tensors {sorted(declared.tensors)} (optional {sorted(declared.optional_tensors)}), "
                f"got {sorted(names)}")
    return None
