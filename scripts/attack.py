#!/usr/bin/env python3
"""A hostile ZeroMQ client: floods one live dlion peer with malformed and hostile messages, to measure the hardening
of issue 16 against a real peer rather than against unit-test doubles.

    python3 scripts/attack.py --config CONFIG --target ID --count N [--as-peer P] [--curve-unknown
        [--server-key PATH|Z85]] [--rate MSGS_PER_S] [--seed S] [--num-params N]

Aim it with the config the target runs with (`dlion run` writes it resolved, with its keys directory, as
OUT/config.yaml). Without --num-params it builds the configured model (TensorFlow) to learn its size.

The target's endpoint, its peers, its message size limit and its model's size all come from the config, computed by
dlion's own code (`dlion.config`, `dlion.wiring`, `dlion.transport.zmq`), so the attack follows dlion when dlion
changes. The N messages go round-robin over categories, each a distinct attack (`CATEGORIES`); every category cycles
through its variants, so every variant is sent once N is a few hundred:

- garbage, bad_header, wrong_size: malformed frames, built by hand; `dlion.transport.wire.decode` must reject them;
- non_finite, finite_poison, forged_control, far_future: well-formed messages with hostile content, built with the
  real encoder `dlion.transport.wire.encode`, their metadata completed with whatever keys `dlion.messages.KINDS`
  declares (so a forgery passes the declarations and tests what lies behind them); `declared_extremes` sends every
  declared kind with the most extreme values its checks accept;
- takeover: fresh connections that announce a real peer's ZeroMQ routing id, then stay silent for a while or send
  garbage.

Messages go out on DEALER sockets that announce `--as-peer`'s routing id (`dlion.transport.zmq.routing_id` with the
newest incarnation, if dlion has that function; else str(peer id)); with `--curve-unknown` every socket runs CURVE with a fresh key pair the
target has never heard of. Nothing blocks for long: sends time out (SNDTIMEO, then non-blocking for a back-off
period), held connections are few and short, and the whole attack is bounded by `--max-seconds`.

The last line of output is one JSON object: per category the messages handed to ZeroMQ (`sent`), `send_failed`,
`total` attempts, `seconds`, and the connections' handshake events (a handshake that succeeded with an unknown CURVE
key is a hole). A message handed over is not necessarily delivered: the target's own counts say what arrived.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import itertools
import json
import math
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator, NamedTuple

import msgpack
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlion import config as configmod  # noqa: E402
from dlion import messages, wiring  # noqa: E402
from dlion.schema import ConfigError  # noqa: E402
from dlion.transport import wire  # noqa: E402
from dlion.transport import zmq as dlion_zmq  # noqa: E402

DEFAULT_ROUNDS_PER_S = 20.0  # a guess at the target's iterations/s (quickstart: ~30 clean), for exact rounds
SEND_TIMEOUT_MS = 100        # how long one send may wait for room in the socket's queue
BACKOFF_S = 0.25             # after a timed-out send, that socket's sends do not wait at all for this long
SNDHWM = 32                  # messages queued per socket: bounds this process's memory (messages reach ~3 MB)
MAX_HELD = 16                # takeover connections held open at once
DRAIN_S = 2.0                # at the end: how long queued messages may still leave before the sockets close


# ---- the target, as dlion itself computes it ------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What the attack needs to know about the peer it floods."""

    peer_id: int
    endpoint: str
    peer_ids: tuple[int, ...]
    as_peer: int
    num_params: int          # gradient length (trainable parameters)
    num_state: int           # model and gossip vector length (all variables)
    max_message_bytes: int
    eval_every: int
    score_every: int

    @property
    def others(self) -> tuple[int, ...]:
        return tuple(p for p in self.peer_ids if p != self.peer_id)


def peer_host(spec) -> str:
    """A peer's host: `host` or `address` in the config, else loopback."""
    return getattr(spec, "host", None) or getattr(spec, "address", None) or "127.0.0.1"


def endpoint(cfg, peer_id: int) -> str:
    """The peer's ROUTER endpoint, formatted by `ZmqTransport._address` itself (no transport is made)."""
    spec = cfg.peer(peer_id)
    endpoints = {p.id: (peer_host(p), p.port) for p in cfg.peers}
    try:
        return dlion_zmq.ZmqTransport._address(SimpleNamespace(endpoints=endpoints), peer_id)
    except Exception:  # its internals changed: the format it has always had
        return f"tcp://{peer_host(spec)}:{spec.port}"


def routing_id(peer_id: int, incarnation: int | None = None) -> bytes:
    """The ZeroMQ routing id a dlion DEALER of `peer_id` announces: `dlion.transport.zmq.routing_id` if dlion has
    one (any further parameters, such as an incarnation, filled with `incarnation`: default now in microseconds, as
    new as a restarted peer's), else str(peer_id), as dlion's DEALERs set it before that function existed."""
    fn = getattr(dlion_zmq, "routing_id", None)
    if callable(fn):
        guess = time.time_ns() // 1000 if incarnation is None else incarnation
        try:
            extra = sum(1 for p in inspect.signature(fn).parameters.values()
                        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)) - 1
            rid = fn(peer_id, *[guess] * max(0, extra))
            return rid.encode() if isinstance(rid, str) else bytes(rid)
        except Exception:
            pass
    return str(peer_id).encode()


def model_sizes(cfg) -> tuple[int, int]:
    """(trainable parameters, all variables) of the configured model, built as the trainer builds it (TensorFlow)."""
    from dlion.models import build_model
    input_shape, num_classes = wiring.shape_and_classes(cfg, wiring.load_dataset(cfg, cfg.peer_ids[0]))
    model = build_model(cfg.training.model, input_shape, num_classes, seed=cfg.seed,
                        from_logits=getattr(cfg.training, "loss_from_logits", True))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return trainable, trainable + sum(int(np.prod(v.shape)) for v in model.non_trainable_variables)


def without_keys(cfg):
    """The config with security off, where the config has a security section: building a transport then needs no
    key files (and the attack never reads a peer's secret key)."""
    sec = getattr(cfg, "security", None)
    if sec is None or not dataclasses.is_dataclass(sec) or not hasattr(sec, "mode"):
        return cfg
    return dataclasses.replace(cfg, security=dataclasses.replace(sec, mode="none"))


def wire_limits(cfg, num_values: int, peer_id: int | None = None) -> wire.WireLimits:
    """The target's `WireLimits`, taken from a transport built (not started) by `wiring.make_transport` itself;
    should that fail, the rule it has had: the configured peers, and `wiring.max_message_bytes`."""
    peer_id = cfg.peer_ids[0] if peer_id is None else peer_id
    try:
        transport = wiring.make_transport(without_keys(cfg), peer_id, num_values)
    except Exception:
        return wire.WireLimits(frozenset(cfg.peer_ids), wiring.max_message_bytes(num_values))
    try:
        return transport.limits
    finally:
        try:
            transport.close()  # never started: only releases its wake-up pipe
        except Exception:
            pass


def make_target(cfg, peer_id: int, as_peer: int | None = None, num_params: int | None = None) -> Target:
    cfg.peer(peer_id)  # KeyError for an unknown id
    others = [p for p in sorted(cfg.peer_ids) if p != peer_id]
    if as_peer is None:
        as_peer = others[0] if others else peer_id
    if num_params is None:
        num_params, num_state = model_sizes(cfg)
    else:
        num_state = num_params
    knowledge = getattr(cfg.strategies, "knowledge", None)
    score_every = getattr(getattr(knowledge, "params", None), "every", None) or cfg.evaluation.every_iterations
    limits = wire_limits(cfg, max(num_params, num_state), peer_id)
    return Target(peer_id, endpoint(cfg, peer_id), tuple(sorted(cfg.peer_ids)), as_peer, num_params, num_state,
                  limits.max_message_bytes, cfg.evaluation.every_iterations, int(score_every))


# ---- what the generators share -----------------------------------------------------------------------------------

class Attack(NamedTuple):
    """One message (or connection) of the flood."""

    category: str
    variant: str
    frames: list                # what to send; [] sends nothing (a silent connection)
    identity: bytes | None      # the routing id the socket announces; None: the ROUTER picks one
    hold_s: float | None = None  # takeover: a fresh connection kept open this long; None: the shared socket


@dataclass
class Forge:
    """A seeded random source, the target, a guess at its current round, and base vectors of the right lengths."""

    target: Target
    rng: np.random.Generator
    rounds_per_s: float = DEFAULT_ROUNDS_PER_S
    hold_s: float = 3.0
    started: float = field(default_factory=time.monotonic)
    incarnation: int = field(default_factory=lambda: time.time_ns() // 1000)  # newer than any running peer's
    _cache: dict = field(default_factory=dict)
    _fetch_round: int = 0
    _takeover: Iterator[bytes] | None = None

    @property
    def identity(self) -> bytes:
        """The routing id of the shared sockets: --as-peer's, as a peer started now would announce it."""
        return routing_id(self.target.as_peer, self.incarnation)

    def takeover_ids(self) -> list[bytes]:
        """The routing ids takeover connections claim: each real peer's other than the target (and than --as-peer,
        whose id the shared sockets already claim, when there is another), in dlion's form and in the bare form."""
        peers = [p for p in self.target.others if p != self.target.as_peer] or list(self.target.others) or \
            [self.target.as_peer]
        ids = [routing_id(p, self.incarnation) for p in peers] + [str(p).encode() for p in peers]
        return list(dict.fromkeys(ids))

    def round_now(self) -> int:
        """A guess at the target's round (a low guess is safe: stages collect every round up to their own)."""
        return int((time.monotonic() - self.started) * self.rounds_per_s)

    def recent_round(self) -> int:
        return int(self.rng.integers(0, self.round_now() + 1))

    def coming_round(self, every: int) -> int:
        """A round at which the target evaluates or scores (a multiple of `every`) between half and twice the
        guessed current round, plus a few: the guess is rough, the target's mailbox keeps future rounds."""
        now = self.round_now()
        return int(self.rng.integers(now // (2 * every), 2 * now // every + 4)) * every

    def far_round(self) -> int:
        return int(10 ** self.rng.uniform(6, 9))

    def next_fetch_round(self) -> int:
        self._fetch_round = max(self._fetch_round + 1, self.round_now())
        return self._fetch_round

    def takeover_id(self) -> bytes:
        """The next of `takeover_ids`, in turn."""
        if self._takeover is None:
            self._takeover = itertools.cycle(self.takeover_ids())
        return next(self._takeover)

    def base(self, n: int) -> np.ndarray:
        """A plausible float32 vector of length n (small random values), made once."""
        if ("base", n) not in self._cache:
            self._cache[("base", n)] = (self.rng.standard_normal(n) * 0.01).astype(np.float32)
        return self._cache[("base", n)]

    def zeros(self, n: int) -> np.ndarray:
        if ("zeros", n) not in self._cache:
            self._cache[("zeros", n)] = np.zeros(n, np.uint8)
        return self._cache[("zeros", n)]

    def with_bad(self, n: int, value: float, fraction: float = 0.001) -> np.ndarray:
        """The base vector with `value` (NaN, Inf) at a few random positions."""
        a = self.base(n).copy()
        a[self.rng.integers(0, n, size=max(1, int(n * fraction)))] = value
        return a

    def sparse(self, n: int, k: int, values: float | np.ndarray | None = None) -> wire.Sparse:
        """k distinct increasing positions of n, with `values` (default: small random)."""
        k = min(k, n)
        idx = np.sort(self.rng.choice(n, size=k, replace=False)).astype(np.uint32)
        vals = (self.rng.standard_normal(k) * 0.01 if values is None else np.broadcast_to(values, (k,)))
        return wire.Sparse(idx, np.asarray(vals, np.float32), n)

    def figures(self, acc: float) -> str:
        """A stop's evidence as dlion writes it, every peer at `acc` in the current round."""
        return messages.format_figures({p: (self.round_now(), acc) for p in self.target.peer_ids})

    def plausible_values(self) -> tuple:
        return (1, 0, 1.0, 0.5, "", ",".join(map(str, self.target.peer_ids)), self.figures(0.99), True)

    def extreme_values(self) -> tuple:
        return (float(np.finfo(np.float64).max), 1e30, 2**63 - 1, 2**62, -1e30, -(2**63), 1e-300,
                self.figures(1.0), "9" * 4000)

    def complete_meta(self, kind: str, meta: dict | None, candidates: tuple | None = None) -> dict:
        """`meta` with every key the kind's declaration (`dlion.messages.KINDS`) requires and `meta` lacks, each
        the first of `candidates` (default: plausible values) its check accepts: a forgery must pass the
        declarations to test what lies behind them, whatever keys dlion adds."""
        meta = dict(meta or {})
        for key, check in declared(kind).get("meta", {}).items():
            if key not in meta:
                meta[key] = next((v for v in candidates or self.plausible_values() if _accepts(check, v)), 1)
        return meta

    def encode(self, kind: str, round_: int, tensors=None, meta=None, sender: int | None = None) -> list:
        """The real encoder, as a peer claiming `--as-peer` would send, the metadata completed as declared."""
        return wire.encode(kind, self.target.as_peer if sender is None else sender, round_, tensors,
                           self.complete_meta(kind, meta), time.time())

    def header(self, **fields) -> dict:
        """A valid header (a stop from --as-peer) with `fields` replacing or adding entries."""
        h = {"v": wire.VERSION, "k": messages.STOP, "s": self.target.as_peer, "r": self.round_now(), "m": {},
             "t": [], "ts": time.time(), "bw": None}
        h.update(fields)
        return h


def declared(kind: str) -> dict:
    """What dlion declares for `kind`: its meta checks and tensor names ({} for an undeclared kind)."""
    spec = messages.KINDS.get(kind)
    if spec is None:
        return {}
    return {"meta": dict(getattr(spec, "meta", {}) or {}), "tensors": frozenset(getattr(spec, "tensors", ())),
            "optional_tensors": frozenset(getattr(spec, "optional_tensors", ()))}


def _accepts(check, value) -> bool:
    try:
        return bool(check(value))
    except Exception:
        return False


def packed(h) -> bytes:
    return msgpack.packb(h)


# ---- the categories ------------------------------------------------------------------------------------------

Variant = Callable[[Forge], "list | Attack"]
CATEGORIES: dict[str, list[Variant]] = {}
MALFORMED = ("garbage", "bad_header", "wrong_size")  # rejected by wire.decode; the rest decode and go further


def variant(category: str):
    """Register a generator of one attack variant under `category` (variants are cycled in definition order)."""
    def register(fn: Variant) -> Variant:
        CATEGORIES.setdefault(category, []).append(fn)
        return fn
    return register


def category_stream(category: str, forge: Forge) -> Iterator[Attack]:
    """The category's attacks, its variants in turn, forever. A variant returns frames (sent on the shared socket
    that claims --as-peer) or a whole `Attack` (its own identity or connection)."""
    for fn in itertools.cycle(CATEGORIES[category]):
        out = fn(forge)
        name = fn.__name__.removeprefix("_")
        if isinstance(out, Attack):
            yield out._replace(category=category, variant=name)
        else:
            yield Attack(category, name, out, forge.identity)


def streams(forge: Forge) -> dict[str, Iterator[Attack]]:
    return {name: category_stream(name, forge) for name in CATEGORIES}


# garbage: frames that are not a message at all

@variant("garbage")
def _random_frames(f: Forge) -> list:
    return [f.rng.bytes(int(f.rng.integers(1, 4096))) for _ in range(int(f.rng.integers(1, 5)))]


@variant("garbage")
def _empty_message(f: Forge) -> list:
    return [b""]  # a ZeroMQ message has at least one frame: the emptiest multipart there is


@variant("garbage")
def _empty_frames(f: Forge) -> list:
    return [b""] * int(f.rng.integers(2, 64))


@variant("garbage")
def _too_many_frames(f: Forge) -> list:
    return [*f.encode(messages.STOP, f.round_now()), *[f.rng.bytes(8) for _ in range(int(f.rng.integers(50, 500)))]]


@variant("garbage")
def _thousand_empty_frames(f: Forge) -> list:
    return [packed(f.header())] + [b""] * 1000


@variant("garbage")
def _header_sized_zeros(f: Forge) -> list:
    return [bytes(wire.MAX_HEADER_BYTES + 1)]


@variant("garbage")
def _stranger(f: Forge) -> Attack:
    """Garbage from a routing id that is no peer's."""
    return Attack("", "", [f.rng.bytes(64)], b"mallory")


# bad_header: the header frame is not what the schema says

@variant("bad_header")
def _not_msgpack(f: Forge) -> list:
    return [b"\xc1" + f.rng.bytes(int(f.rng.integers(0, 256)))]  # 0xc1 is never used by msgpack


@variant("bad_header")
def _truncated(f: Forge) -> list:
    h = packed(f.header())
    return [h[:int(f.rng.integers(1, len(h)))]]


@variant("bad_header")
def _not_a_map(f: Forge) -> list:
    return [packed([wire.VERSION, messages.STOP, f.target.as_peer, 0])]


@variant("bad_header")
def _wrong_types(f: Forge) -> list:
    bad = [("v", "3"), ("k", 7), ("s", str(f.target.as_peer)), ("s", float(f.target.as_peer)), ("s", True),
           ("r", -1), ("r", 1.5), ("r", True), ("m", [1, 2]), ("t", {"n": "g"}), ("ts", "now"),
           ("ts", float("nan")), ("ts", -1.0), ("ts", 12), ("bw", 0.0), ("bw", -5.0), ("bw", float("inf")),
           ("bw", "fast")]
    key, value = bad[int(f.rng.integers(len(bad)))]
    return [packed(f.header(**{key: value}))]


@variant("bad_header")
def _missing_field(f: Forge) -> list:
    h = f.header()
    del h[sorted(h)[int(f.rng.integers(len(h)))]]
    return [packed(h)]


@variant("bad_header")
def _extra_field(f: Forge) -> list:
    return [packed(f.header(x=1, __class__="os.system"))]


@variant("bad_header")
def _wrong_version(f: Forge) -> list:
    return [packed(f.header(v=[0, wire.VERSION - 1, wire.VERSION + 1, 2**31, True][int(f.rng.integers(5))]))]


@variant("bad_header")
def _unknown_kind(f: Forge) -> list:
    return [packed(f.header(k=["pwn", "", "GRAD", "__class__", "stop\0"][int(f.rng.integers(5))]))]


@variant("bad_header")
def _unknown_sender(f: Forge) -> list:
    return [packed(f.header(s=[max(f.target.peer_ids) + 1, 10**6, -1, 2**64 - 1][int(f.rng.integers(4))]))]


@variant("bad_header")
def _huge_string(f: Forge) -> list:
    big = "A" * 5000
    return [packed(f.header(**[{"k": big}, {"m": {"acc": big}}, {"m": {big: 1}}][int(f.rng.integers(3))]))]


@variant("bad_header")
def _huge_map(f: Forge) -> list:
    return [packed(f.header(m={f"k{i}": i for i in range(5000)}))]  # under the header size limit, over the map one


@variant("bad_header")
def _meta_too_many_entries(f: Forge) -> list:
    return [packed(f.header(m={f"k{i}": i for i in range(33)}))]


@variant("bad_header")
def _huge_tensor_list(f: Forge) -> list:
    return [packed(f.header(t=[{"n": f"g{i}", "d": "uint8", "sh": [0], "e": "dense"} for i in range(1000)]))]


@variant("bad_header")
def _header_too_large(f: Forge) -> list:
    return [packed(f.header(m={f"k{i}": "B" * 4000 for i in range(17)}))]


@variant("bad_header")
def _deeply_nested(f: Forge) -> list:
    return [b"\x91" * 50_000 + b"\xc0"]  # under the header size limit, over the unpacker's stack


@variant("bad_header")
def _bin_and_ext(f: Forge) -> list:
    value = [b"raw bytes", msgpack.ExtType(1, b"x")][int(f.rng.integers(2))]
    return [packed(f.header(m={"x": value}))]


@variant("bad_header")
def _non_string_key(f: Forge) -> list:
    h = f.header()
    h[1] = 2
    return [packed(h)]


@variant("bad_header")
def _meta_not_scalar(f: Forge) -> list:
    return [packed(f.header(m={"w": [1.0, 2.0]}))]


@variant("bad_header")
def _bad_tensor_spec(f: Forge) -> list:
    specs = [{"n": "g", "d": "object", "sh": [4], "e": "dense"},
             {"n": "g", "d": "float32", "sh": [4], "e": "lz4"},
             {"n": 5, "d": "float32", "sh": [4], "e": "dense"},
             {"n": "g", "d": "float32", "sh": [4], "e": "dense", "nnz": 1},
             {"n": "g", "d": "float32", "sh": [4], "e": "sparse", "nnz": 1, "id": "int8"},
             ["g", "float32", [4]]]
    spec = specs[int(f.rng.integers(len(specs)))]
    return [packed(f.header(k=messages.GRAD, t=[spec], m={"w": 1.0})), bytes(16)]


@variant("bad_header")
def _duplicate_tensor_names(f: Forge) -> list:
    spec = {"n": "g", "d": "float32", "sh": [1], "e": "dense"}
    return [packed(f.header(k=messages.GRAD, t=[spec, spec], m={"w": 1.0})), bytes(4), bytes(4)]


# wrong_size: the frames do not carry what the header says

def _grad_header(f: Forge, *specs: dict) -> bytes:
    return packed(f.header(k=messages.GRAD, r=f.recent_round(), m={"w": 1.0}, t=list(specs)))


def _dense(name: str, dtype: str, shape) -> dict:
    return {"n": name, "d": dtype, "sh": list(shape), "e": "dense"}


def _sparse_spec(name: str, size: int, nnz: int, encoding: str = wire.INDEX_DTYPE, dtype: str = "float32") -> dict:
    return {"n": name, "d": dtype, "sh": [size], "e": "sparse", "nnz": nnz, "id": encoding}


@variant("wrong_size")
def _dense_short(f: Forge) -> list:
    n = f.target.num_params
    return [_grad_header(f, _dense("g", "float32", [n])), f.base(n).tobytes()[:-4]]


@variant("wrong_size")
def _dense_long(f: Forge) -> list:
    n = 1000
    return [_grad_header(f, _dense("g", "float32", [n])), bytes(4 * n + int(f.rng.integers(1, 64)))]


@variant("wrong_size")
def _dtype_mismatch(f: Forge) -> list:
    n = f.target.num_params
    return [_grad_header(f, _dense("g", "float64", [n])), f.base(n).tobytes()]


@variant("wrong_size")
def _shape_overflow(f: Forge) -> list:
    return [_grad_header(f, _dense("g", "float32", [2**62, 2**62])), bytes(4)]


@variant("wrong_size")
def _huge_shape_small_frame(f: Forge) -> list:
    return [_grad_header(f, _dense("g", "float32", [2**40])), bytes(64)]


@variant("wrong_size")
def _negative_dimension(f: Forge) -> list:
    return [_grad_header(f, _dense("g", "float32", [-1])), b""]


@variant("wrong_size")
def _sparse_index_out_of_range(f: Forge) -> list:
    n, k = f.target.num_params, 8
    idx = np.sort(f.rng.choice(n, size=k, replace=False)).astype("<u4")
    idx[-1] = [n, n + 1, 2**32 - 1][int(f.rng.integers(3))]
    return [_grad_header(f, _sparse_spec("g", n, k)), idx.tobytes(), bytes(4 * k)]


@variant("wrong_size")
def _sparse_gaps_out_of_range(f: Forge) -> list:
    n = f.target.num_params
    k = n // 65535 + 2  # gaps of 65535 each: the last position lies beyond n
    return [_grad_header(f, _sparse_spec("g", n, k, wire.GAP_ENCODING)), np.full(k, 65535, "<u2").tobytes(),
            bytes(4 * k)]


@variant("wrong_size")
def _nnz_mismatch(f: Forge) -> list:
    n = f.target.num_params
    idx = np.arange(5, dtype="<u4")
    return [_grad_header(f, _sparse_spec("g", n, 10)), idx.tobytes(), bytes(4 * 5)]


@variant("wrong_size")
def _sparse_values_short(f: Forge) -> list:
    n, k = f.target.num_params, 16
    idx = np.arange(k, dtype="<u4")
    return [_grad_header(f, _sparse_spec("g", n, k)), idx.tobytes(), bytes(4 * k - 2)]


@variant("wrong_size")
def _sparse_two_dimensional(f: Forge) -> list:
    spec = {"n": "g", "d": "float32", "sh": [3, 4], "e": "sparse", "nnz": 1, "id": wire.INDEX_DTYPE}
    return [_grad_header(f, spec), bytes(4), bytes(4)]


@variant("wrong_size")
def _frame_missing(f: Forge) -> list:
    return [_grad_header(f, _dense("g", "float32", [4]), _dense("h", "float32", [4])), bytes(16)]


def _oversize_frames(f: Forge, kind: str, meta: dict) -> list:
    """A well-formed message of `kind` whose uint8 tensor 'x' makes it 1..64 bytes above the target's limit."""
    limit = f.target.max_message_bytes
    over = int(f.rng.integers(1, 65))
    header_len = len(bytes(f.encode(kind, f.recent_round(), {"x": f.zeros(1)}, meta)[0])) + 16  # digits of the size
    n = max(1, limit + over - header_len)
    frames = f.encode(kind, f.recent_round(), {"x": f.zeros(limit + 64)[:n]}, meta)
    while sum(memoryview(fr).nbytes for fr in frames) <= limit:  # header shorter than guessed
        n += 16
        frames = f.encode(kind, f.recent_round(), {"x": f.zeros(limit + 64)[:n]}, meta)
    return frames


@variant("wrong_size")
def _oversize_model(f: Forge) -> list:
    return _oversize_frames(f, messages.MODEL, {})


@variant("wrong_size")
def _oversize_grad_frames(f: Forge) -> list:
    """Many frames that together just exceed the limit."""
    limit, parts = f.target.max_message_bytes, 8
    size = limit // parts + 1
    return [_grad_header(f, *[_dense(f"g{i}", "uint8", [size]) for i in range(parts)]),
            *[f.zeros(size) for _ in range(parts)]]


@variant("wrong_size")
def _oversize_single_frame(f: Forge) -> list:
    return [f.zeros(f.target.max_message_bytes + 1)]


# non_finite: well-formed grad, gossip and model messages of the right lengths, with NaN and Inf

def _bad_value(f: Forge) -> float:
    return [math.nan, math.inf, -math.inf][int(f.rng.integers(3))]


@variant("non_finite")
def _grad_dense(f: Forge) -> list:
    return f.encode(messages.GRAD, f.recent_round(), {"g": f.with_bad(f.target.num_params, _bad_value(f))},
                    {"w": 32.0})


@variant("non_finite")
def _grad_sparse(f: Forge) -> list:
    return f.encode(messages.GRAD, f.recent_round(), {"g": f.sparse(f.target.num_params, 256, _bad_value(f))},
                    {"w": 32.0})


@variant("non_finite")
def _gossip_dense(f: Forge) -> list:
    return f.encode(messages.GOSSIP, f.recent_round(), {"x": f.with_bad(f.target.num_state, _bad_value(f))},
                    {"n": f.round_now() + 1, "w": 0.5})


@variant("non_finite")
def _gossip_sparse(f: Forge) -> list:
    x = f.sparse(f.target.num_state, 256, _bad_value(f))
    return f.encode(messages.GOSSIP, f.recent_round(), {"x": x, "owed": np.full(256, _bad_value(f), np.float16)},
                    {"n": f.round_now() + 2, "w": 0.5})


@variant("non_finite")
def _gossip_owed(f: Forge) -> list:
    n = f.target.num_state
    return f.encode(messages.GOSSIP, f.recent_round(), {"x": f.base(n), "owed": f.with_bad(n, _bad_value(f))},
                    {"n": 1, "w": 0.5})


@variant("non_finite")
def _model(f: Forge) -> list:
    return f.encode(messages.MODEL, f.round_now(), {"x": f.with_bad(f.target.num_state, _bad_value(f), 0.01)})


@variant("non_finite")
def _all_nan_grad(f: Forge) -> list:
    return f.encode(messages.GRAD, f.recent_round(), {"g": np.full(f.target.num_params, np.nan, np.float32)},
                    {"w": 1.0})


@variant("non_finite")
def _meta(f: Forge) -> list:
    kind, key = [(messages.GRAD, "w"), (messages.REPORT, "rate"), (messages.SCORE, "loss"),
                 (messages.GOSSIP, "w")][int(f.rng.integers(4))]
    meta = {key: _bad_value(f), **({"n": f.round_now() + 1} if kind == messages.GOSSIP else {})}
    tensors = ({"g": f.base(f.target.num_params)} if kind == messages.GRAD else
               {"x": f.base(f.target.num_state)} if kind == messages.GOSSIP else None)
    return f.encode(kind, f.recent_round(), tensors, meta)


# finite_poison: finite but huge values and weights, and push-sum link resets

@variant("finite_poison")
def _grad_huge_weight(f: Forge) -> list:
    return f.encode(messages.GRAD, f.recent_round(), {"g": np.full(f.target.num_params, 1e10, np.float32)},
                    {"w": 1e30})


@variant("finite_poison")
def _grad_huge_weight_sparse(f: Forge) -> list:
    n = f.target.num_params
    return f.encode(messages.GRAD, f.recent_round(), {"g": f.sparse(n, max(1, n // 100), 1e10)}, {"w": 1e30})


@variant("finite_poison")
def _grad_float_max(f: Forge) -> list:
    return f.encode(messages.GRAD, f.recent_round(),
                    {"g": np.full(f.target.num_params, np.finfo(np.float32).max, np.float32)},
                    {"w": float(np.finfo(np.float64).max)})


@variant("finite_poison")
def _gossip_reset_huge_weight(f: Forge) -> list:
    return f.encode(messages.GOSSIP, f.recent_round(), {"x": f.base(f.target.num_state)}, {"n": 1, "w": 1e30})


@variant("finite_poison")
def _gossip_reset_repeated(f: Forge) -> list:
    """n=1 says 'a new link': each one may inject up to the largest weight the target allows, again and again."""
    w = float(len(f.target.peer_ids))
    return f.encode(messages.GOSSIP, f.recent_round(), {"x": f.base(f.target.num_state) * np.float32(1e3)},
                    {"n": 1, "w": w})


@variant("finite_poison")
def _gossip_sequence_jump(f: Forge) -> list:
    return f.encode(messages.GOSSIP, f.recent_round(), {"x": f.base(f.target.num_state)}, {"n": 2**62, "w": 1e30})


@variant("finite_poison")
def _gossip_huge_values(f: Forge) -> list:
    return f.encode(messages.GOSSIP, f.recent_round(),
                    {"x": np.full(f.target.num_state, 1e30, np.float32)}, {"n": 1, "w": 1.0})


@variant("finite_poison")
def _model_huge(f: Forge) -> list:
    return f.encode(messages.MODEL, f.round_now(), {"x": np.full(f.target.num_state, 1e30, np.float32)})


@variant("finite_poison")
def _report_huge_rate(f: Forge) -> list:
    return f.encode(messages.REPORT, f.recent_round(), None, {"rate": 1e30})


@variant("finite_poison")
def _score_best_ever(f: Forge) -> list:
    """The lowest loss of all: invites the target to fetch our (poisoned) model."""
    return f.encode(messages.SCORE, f.coming_round(f.target.score_every), None, {"loss": -1e30})


@variant("finite_poison")
def _declared_extremes(f: Forge) -> list:
    """Each declared kind in turn (new ones included), every meta value the most extreme its check accepts, every
    tensor 1e30: the bounds of the declarations themselves."""
    kinds = sorted(messages.KINDS)
    kind = kinds[f.rng.integers(len(kinds))]
    spec = declared(kind)
    meta = f.complete_meta(kind, {}, f.extreme_values())
    length = {"g": f.target.num_params, "x": f.target.num_state}
    tensors = {name: np.full(length.get(name, 16), 1e30, np.float32) for name in spec.get("tensors", ())}
    return f.encode(kind, f.recent_round(), tensors, meta)


# forged_control: control messages claiming to be --as-peer

@variant("forged_control")
def _stop(f: Forge) -> list:
    return f.encode(messages.STOP, f.round_now())


@variant("forged_control")
def _eval_true(f: Forge) -> list:
    return f.encode(messages.EVAL, f.coming_round(f.target.eval_every), None, {"acc": True})


@variant("forged_control")
def _eval_nan(f: Forge) -> list:
    return f.encode(messages.EVAL, f.coming_round(f.target.eval_every), None, {"acc": math.nan})


@variant("forged_control")
def _eval_two(f: Forge) -> list:
    return f.encode(messages.EVAL, f.coming_round(f.target.eval_every), None, {"acc": 2.0})


@variant("forged_control")
def _eval_plausible(f: Forge) -> list:
    return f.encode(messages.EVAL, f.coming_round(f.target.eval_every), None, {"acc": 0.99})


@variant("forged_control")
def _bye(f: Forge) -> list:
    return f.encode(messages.BYE, 0)


@variant("forged_control")
def _fetch(f: Forge) -> list:
    return f.encode(messages.FETCH, f.next_fetch_round())


@variant("forged_control")
def _score(f: Forge) -> list:
    return f.encode(messages.SCORE, f.coming_round(f.target.score_every), None, {"loss": 0.0})


@variant("forged_control")
def _hello(f: Forge) -> list:
    heard = ["", ",".join(map(str, f.target.peer_ids)), "999999", ",,,"][int(f.rng.integers(4))]
    rate = [0.0, 1.0, 1e12][int(f.rng.integers(3))]  # a rate the first rounds' split would follow: clipped
    return f.encode(messages.HELLO, 0, None, {"heard": heard, "at": 0, "rate": rate})


@variant("forged_control")
def _sender_mismatch(f: Forge) -> list:
    """A stop whose header names another peer (or the target itself) than the connection claims."""
    others = [p for p in f.target.peer_ids if p != f.target.as_peer] or [f.target.as_peer]
    return f.encode(messages.STOP, f.round_now(), sender=others[int(f.rng.integers(len(others)))])


# far_future: well-formed messages for rounds the target will never reach

@variant("far_future")
def _grad_sparse_far(f: Forge) -> list:
    return f.encode(messages.GRAD, f.far_round(), {"g": f.sparse(f.target.num_params, 64)}, {"w": 32.0})


@variant("far_future")
def _grad_dense_far(f: Forge) -> list:
    return f.encode(messages.GRAD, f.far_round(), {"g": f.base(f.target.num_params)}, {"w": 32.0})


@variant("far_future")
def _gossip_far(f: Forge) -> list:
    return f.encode(messages.GOSSIP, f.far_round(), {"x": f.base(f.target.num_state)},
                    {"n": f.far_round(), "w": 0.5})


@variant("far_future")
def _eval_far(f: Forge) -> list:
    return f.encode(messages.EVAL, f.far_round() // f.target.eval_every * f.target.eval_every, None, {"acc": 0.5})


@variant("far_future")
def _model_far(f: Forge) -> list:
    return f.encode(messages.MODEL, f.far_round(), {"x": f.base(f.target.num_state)})


@variant("far_future")
def _probe_payload_far(f: Forge) -> list:
    """A probe (link measurement, not used in training) with a payload near the size limit: memory if kept."""
    n = max(1, f.target.max_message_bytes - 4096)
    return f.encode(messages.PROBE, f.far_round(), {"payload": f.zeros(n)})


@variant("far_future")
def _round_max(f: Forge) -> list:
    return f.encode(messages.GRAD, 2**63 - 1, {"g": f.sparse(f.target.num_params, 64)}, {"w": 32.0})


# takeover: fresh connections announcing a real peer's routing id

@variant("takeover")
def _silent(f: Forge) -> Attack:
    return Attack("", "", [], f.takeover_id(), f.hold_s)


@variant("takeover")
def _garbage_then_hold(f: Forge) -> Attack:
    return Attack("", "", [f.rng.bytes(int(f.rng.integers(1, 512)))], f.takeover_id(), f.hold_s)


@variant("takeover")
def _flap(f: Forge) -> Attack:
    """Connect and leave at once."""
    return Attack("", "", [], f.takeover_id(), 0.0)


# ---- sockets -------------------------------------------------------------------------------------------------

_EVENT_NAMES = {zmq.EVENT_CONNECTED: "connected", zmq.EVENT_DISCONNECTED: "disconnected",
                zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_succeeded",
                zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed_other"}


class Sender:
    """DEALER sockets to the target: one shared socket per announced identity, and short-lived takeover
    connections. Every socket has LINGER 0, a small queue and a send timeout; with `server_key`, CURVE with a fresh
    key pair of its own. Counts the connections' handshake events."""

    def __init__(self, target_endpoint: str, server_key: bytes | None = None, send_timeout_ms: int = SEND_TIMEOUT_MS):
        self.endpoint = target_endpoint
        self.server_key = server_key
        self.send_timeout_ms = send_timeout_ms
        self.ctx = zmq.Context()
        self.shared: dict[bytes | None, zmq.Socket] = {}
        self.held: list[tuple[float, zmq.Socket]] = []
        self.monitors: dict[zmq.Socket, zmq.Socket] = {}
        self.backoff_until: dict[zmq.Socket, float] = {}
        self.events: Counter = Counter()

    def _socket(self, identity: bytes | None) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, SNDHWM)
        s.setsockopt(zmq.SNDTIMEO, self.send_timeout_ms)
        if identity is not None:
            s.setsockopt(zmq.IDENTITY, identity)
        if self.server_key is not None:
            public, secret = zmq.curve_keypair()  # fresh: in no allow-list
            s.curve_publickey, s.curve_secretkey, s.curve_serverkey = public, secret, self.server_key
        self.monitors[s] = s.get_monitor_socket(sum(_EVENT_NAMES))
        s.connect(self.endpoint)
        return s

    def send(self, attack: Attack) -> bool:
        """Hand the attack to ZeroMQ; False if its socket's queue stayed full (the target is not reading)."""
        if attack.hold_s is not None:
            return self._takeover(attack)
        sock = self.shared.get(attack.identity)
        if sock is None:
            sock = self.shared[attack.identity] = self._socket(attack.identity)
        return self._send(sock, attack.frames)

    def _send(self, sock: zmq.Socket, frames: list) -> bool:
        if not frames:
            return True
        now = time.monotonic()
        flags = zmq.NOBLOCK if now < self.backoff_until.get(sock, 0.0) else 0
        try:
            sock.send_multipart(frames, flags)
        except zmq.Again:
            self.backoff_until[sock] = now + BACKOFF_S
            return False
        return True

    def _takeover(self, attack: Attack) -> bool:
        """A fresh connection with a real peer's id; the shared socket claiming that id (if any) is replaced later,
        so that it takes the id back."""
        if (old := self.shared.pop(attack.identity, None)) is not None:
            self._close(old, linger_ms=100)
        while len(self.held) >= MAX_HELD:
            self._close(self.held.pop(0)[1])
        sock = self._socket(attack.identity)
        ok = self._send(sock, attack.frames)
        self.held.append((time.monotonic() + attack.hold_s, sock))
        return ok

    def sweep(self) -> None:
        """Close takeover connections whose time is up; collect handshake events."""
        now = time.monotonic()
        for due, sock in [h for h in self.held if h[0] <= now]:
            self.held.remove((due, sock))
            self._close(sock)
        for monitor in self.monitors.values():
            self._drain(monitor)

    def _drain(self, monitor: zmq.Socket) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.events[_EVENT_NAMES.get(event["event"], str(event["event"]))] += 1

    def _close(self, sock: zmq.Socket, linger_ms: int = 0) -> None:
        monitor = self.monitors.pop(sock)
        self._drain(monitor)
        sock.disable_monitor()
        monitor.close(linger=0)
        self.backoff_until.pop(sock, None)
        sock.close(linger=linger_ms)

    def close(self, drain_s: float = DRAIN_S) -> None:
        """Give queued messages up to `drain_s` to leave, then close everything."""
        time.sleep(min(0.2, drain_s))
        self.sweep()
        for sock in list(self.shared.values()):
            self._close(sock, linger_ms=int(drain_s * 1000))
        for _, sock in self.held:
            self._close(sock)
        self.shared, self.held = {}, []
        self.ctx.term()  # waits at most the longest linger


# ---- the flood -----------------------------------------------------------------------------------------------

def flood(target: Target, count: int, sender: Sender, seed: int = 0, rate: float | None = None,
          max_seconds: float = 300.0, rounds_per_s: float = DEFAULT_ROUNDS_PER_S, hold_s: float = 3.0,
          stop: threading.Event | None = None) -> dict:
    """Send `count` attacks round-robin over the categories (until `stop` is set); the result line's figures."""
    forge = Forge(target, np.random.default_rng(seed), rounds_per_s, hold_s)
    by_category = streams(forge)
    order = list(by_category)
    sent, failed = Counter(dict.fromkeys(order, 0)), Counter()
    start = time.monotonic()
    deadline = start + max_seconds
    for i in range(count):
        if rate:
            time.sleep(max(0.0, min(start + i / rate, deadline) - time.monotonic()))
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            break
        attack = next(by_category[order[i % len(order)]])
        if sender.send(attack):
            sent[attack.category] += 1
        else:
            failed[attack.category] += 1
        if i % 50 == 0:
            sender.sweep()
    seconds = time.monotonic() - start
    sender.close(min(DRAIN_S, max(0.0, deadline - time.monotonic())))
    total = sum(sent.values()) + sum(failed.values())
    return {"sent": dict(sent), "send_failed": sum(failed.values()), "total": total, "seconds": round(seconds, 3),
            "failed_by_category": {k: v for k, v in failed.items() if v}, "requested": count,
            "connections": dict(sender.events), "endpoint": target.endpoint, "target": target.peer_id,
            "as_peer": target.as_peer, "curve": sender.server_key is not None}


# ---- CURVE server key --------------------------------------------------------------------------------------------

def load_server_key(value: str, base: Path = Path(".")) -> bytes:
    """The target's CURVE public key: a z85 string, or a file holding one (a ZeroMQ certificate, a bare z85 line, or
    32 raw bytes)."""
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.exists() and Path(value).exists():
        path = Path(value)
    if not path.exists():
        if len(value) == 40:
            return value.encode()
        raise SystemExit(f"attack: --server-key {value!r} is neither a file nor a 40-character z85 key")
    try:
        import zmq.auth
        public, _ = zmq.auth.load_certificate(str(path))
        if public:
            return public
    except Exception:
        pass
    raw = path.read_bytes()
    if len(raw.strip()) == 40:
        return raw.strip()
    if len(raw) == 32:
        return raw
    raise SystemExit(f"attack: {path}: no CURVE public key found (a certificate, a z85 line or 32 raw bytes)")


def server_key_from_config(cfg, peer_id: int, base: Path) -> bytes | None:
    """The target's public key as the config names it: `peers[i].public_key` (Z85), else its key file in
    `security.keys_dir` (named by `dlion.security.public_path`); None if the config names none."""
    inline = getattr(cfg.peer(peer_id), "public_key", None)
    if inline:
        return load_server_key(inline, base)
    keys_dir = getattr(getattr(cfg, "security", None), "keys_dir", None)
    if not keys_dir:
        return None
    try:
        from dlion import security
        path = security.public_path(keys_dir, peer_id)
    except (ImportError, AttributeError):
        path = Path(keys_dir) / f"peer-{peer_id}.key"
    path = path if path.is_absolute() or path.exists() else base / path  # as dlion reads it: from the cwd
    return load_server_key(str(path), base) if path.exists() else None


# ---- command line --------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the dlion config the target runs with")
    p.add_argument("--target", type=int, required=True, help="the peer id to flood")
    p.add_argument("--count", type=int, required=True, help="messages (and connections) to send")
    p.add_argument("--as-peer", type=int, help="the peer to impersonate (default: the lowest other peer id)")
    p.add_argument("--curve-unknown", action="store_true", help="CURVE on every socket, with unknown key pairs")
    p.add_argument("--server-key", help="the target's CURVE public key: z85 string or key file (with --curve-unknown;"
                                        " default: from the config)")
    p.add_argument("--rate", type=float, help="messages per second (default: as fast as the target takes them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-params", type=int, help="the model's parameter count (default: build the configured model)")
    p.add_argument("--rounds-per-s", type=float, default=DEFAULT_ROUNDS_PER_S,
                   help="a guess at the target's iterations per second, for forged rounds that must be exact")
    p.add_argument("--hold-s", type=float, default=3.0, help="how long a takeover connection stays open")
    p.add_argument("--max-seconds", type=float, default=300.0, help="bound on the whole attack")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="config override")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = configmod.load(args.config, args.set)
        target = make_target(cfg, args.target, args.as_peer, args.num_params)
    except (ConfigError, KeyError) as exc:
        print(f"attack: {exc}", file=sys.stderr)
        return 2
    server_key = None
    if args.curve_unknown:
        base = Path(args.config).resolve().parent
        server_key = (load_server_key(args.server_key, base) if args.server_key
                      else server_key_from_config(cfg, args.target, base))
        if server_key is None:
            raise SystemExit("attack: --curve-unknown needs the target's public key: --server-key PATH|Z85")
    stop = threading.Event()  # SIGTERM ends the flood early, still with its result line
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    result = flood(target, args.count, Sender(target.endpoint, server_key), args.seed, args.rate, args.max_seconds,
                   args.rounds_per_s, args.hold_s, stop)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
