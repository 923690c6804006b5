"""Wire codec: a msgpack header frame followed by raw array frames, validated field by field.

Everything a peer receives is untrusted: `decode` checks sizes before it allocates or unpacks anything, so a
malformed or hostile message costs a `WireError`, never a crash, a pickle load or a large allocation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import ml_dtypes
import msgpack
import numpy as np

from dlion.messages import KINDS

VERSION = 3  # 2: sent_at and link feedback in the header; 3: sparse indices may travel as 16-bit gaps
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)  # float32's range in half its bytes: for values too small for float16
DTYPES = ("float32", "float16", "float64", "int32", "int64", "uint32", "uint8", "bfloat16")
INDEX_DTYPE = "uint32"
GAP_ENCODING = "gap16"  # sorted indices whose first entry and every step fit 16 bits: 2 bytes per index, not 4
# Little-endian on the wire whatever the host order, so mixed machines agree.
_WIRE_DTYPE = {name: (BFLOAT16 if name == "bfloat16" else np.dtype(name)).newbyteorder("<") for name in DTYPES}
_META_TYPES = (bool, int, float, str, type(None))

# A header is small: a few keys, short strings, at most _MAX_ITEMS tensors. These bound the unpacker.
MAX_HEADER_BYTES = 64 * 1024
_MAX_STR = 4096
_MAX_ITEMS = 64
_HEADER_FIELDS = frozenset({"v", "k", "s", "r", "m", "t", "ts", "bw"})
_DENSE_FIELDS = frozenset({"n", "d", "sh", "e"})
_SPARSE_FIELDS = _DENSE_FIELDS | {"nnz", "id"}
_BUNDLE_FIELDS = frozenset({"v", "b", "ts", "bw"})
MAX_BUNDLE_PARTS = _MAX_ITEMS  # messages in one bundle (a peer's round sends a few per link)


class WireError(ValueError):
    """A message that cannot be encoded or was rejected on decode; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class WireLimits:
    """What a receiver accepts: who may send, how big a message and its meta may be, and the largest batch weight a
    gradient may carry (the global batch)."""

    known_senders: frozenset[int]
    max_message_bytes: int
    max_meta_entries: int = 32
    max_batch_weight: float = math.inf


class Sparse(NamedTuple):
    """A sparse vector of length `size`: `values[i]` sits at position `indices[i]` (uint32). On the wire, indices
    in increasing order whose first entry and steps are all below 2^16 go as 16-bit gaps (`GAP_ENCODING`), which a
    top-k of 1 in 50 to 1 in 60,000 entries almost always allows; others as uint32. Decoding gives uint32 either way."""

    indices: np.ndarray
    values: np.ndarray
    size: int


@dataclass(frozen=True)
class Message:
    """A decoded message; `nbytes` is its size on the wire (all frames). For measuring links: `sent_at` is the
    sender's `time.time()` when it handed the message over, `received_at` the receiver's when it took it off the wire
    (0.0 where it was not received), and `feedback_bps` the sender's estimate of the link from us to it (None before
    it has one)."""

    kind: str
    sender: int
    round: int
    meta: dict[str, Any]
    tensors: dict[str, np.ndarray | Sparse]
    nbytes: int
    received_at: float = 0.0
    sent_at: float = 0.0
    feedback_bps: float | None = None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _nbytes(frame) -> int:
    return memoryview(frame).nbytes


def _raw(a: np.ndarray) -> memoryview:
    """The array's bytes without a copy (the caller already made it contiguous)."""
    flat = a.reshape(-1)
    return memoryview(flat.view(np.uint16) if flat.dtype == BFLOAT16 else flat).cast("B")  # no buffer format


def _check_meta(meta, max_entries: int | None) -> dict:
    if not isinstance(meta, dict):
        raise WireError("meta is not a map")
    if max_entries is not None and len(meta) > max_entries:
        raise WireError(f"meta too large ({len(meta)} > {max_entries} entries)")
    for key, value in meta.items():
        if not isinstance(key, str):
            raise WireError("meta key is not a string")
        if not isinstance(value, _META_TYPES):
            raise WireError(f"meta {key!r} is not a scalar")
    return meta


def _check_indices(indices: np.ndarray, size: int) -> None:
    if indices.size and int(indices.max()) >= size:
        raise WireError(f"sparse index out of range [0, {size})")


def encode(kind: str, sender: int, round: int, tensors: Mapping[str, np.ndarray | Sparse] | None = None,
           meta: Mapping[str, Any] | None = None, sent_at: float = 0.0,
           feedback_bps: float | None = None) -> list[bytes | memoryview]:
    """Frames for one message. Array frames alias the caller's arrays: do not mutate them after sending."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise WireError(f"unknown kind {kind!r}")
    if not (_is_int(sender) and sender >= 0 and _is_int(round) and round >= 0):
        raise WireError("sender and round must be ints >= 0")
    # numpy scalars (a loss from np.mean) are the common slip; msgpack cannot pack them.
    meta = {k: v.item() if isinstance(v, np.generic) else v for k, v in (meta or {}).items()}
    _check_meta(meta, None)
    specs, frames = [], []
    for name, t in (tensors or {}).items():
        if isinstance(t, Sparse):
            indices, values = np.asarray(t.indices), np.asarray(t.values)
            if indices.dtype != np.dtype(INDEX_DTYPE):
                raise WireError(f"tensor {name!r}: sparse indices must be {INDEX_DTYPE}, not {indices.dtype}")
            if indices.ndim != 1 or values.shape != indices.shape:
                raise WireError(f"tensor {name!r}: sparse indices and values must be 1-D of equal length")
            size = int(t.size)
            if size != t.size or size < 0:
                raise WireError(f"tensor {name!r}: bad sparse size {t.size!r}")
            _check_indices(indices, size)
            values = _wire_array(name, values)
            index_frame, encoding = _index_frame(name, indices)
            specs.append({"n": name, "d": values.dtype.name, "sh": [size], "e": "sparse",
                          "nnz": int(indices.size), "id": encoding})
            frames += [index_frame, _raw(values)]
        else:
            a = _wire_array(name, np.asarray(t))
            specs.append({"n": name, "d": a.dtype.name, "sh": list(a.shape), "e": "dense"})
            frames.append(_raw(a))
    header = msgpack.packb({"v": VERSION, "k": kind, "s": sender, "r": round, "m": meta, "t": specs,
                            "ts": float(sent_at), "bw": None if feedback_bps is None else float(feedback_bps)})
    return [header, *frames]


def encode_bundle(parts: Sequence[Sequence], sent_at: float = 0.0,
                  feedback_bps: float | None = None) -> list[bytes | memoryview]:
    """Frames for one multipart message carrying several encoded messages (`encode`'s frames each): a bundle header
    (each part's frame count, and the time and link feedback of the bundle, which the receiver measures the link by)
    followed by the parts' frames."""
    if not 1 <= len(parts) <= MAX_BUNDLE_PARTS:
        raise WireError(f"a bundle carries 1 to {MAX_BUNDLE_PARTS} messages, not {len(parts)}")
    header = msgpack.packb({"v": VERSION, "b": [len(part) for part in parts], "ts": float(sent_at),
                            "bw": None if feedback_bps is None else float(feedback_bps)})
    return [header, *(frame for part in parts for frame in part)]


class Received(NamedTuple):
    """What one multipart message brought: its messages (one, or a bundle's), and the time it was sent and the link
    feedback it carried, which the receiver measures the link by."""

    messages: list[Message]
    sent_at: float
    feedback_bps: float | None


def receive(frames: Sequence, limits: WireLimits, received_at: float = 0.0) -> Received:
    """Validate and decode one multipart message: a message (`encode`) or a bundle of them (`encode_bundle`), each
    part decoded and checked on its own. The first header is unpacked once. Raises WireError on any problem."""
    total = _total(frames, limits)
    h = _unpack_map(frames[0], limits)
    if "b" not in h:
        msg = _decode(frames, h, total, limits, received_at)
        return Received([msg], msg.sent_at, msg.feedback_bps)
    parts, sent_at, feedback = _bundle_parts(frames, h)
    return Received([decode(part, limits, received_at) for part in parts], sent_at, feedback)


def _bundle_parts(frames: Sequence, h: dict) -> tuple[list[Sequence], float, float | None]:
    """A bundle's parts (the frames of each message), its send time and link feedback, from its unpacked header."""
    if h.keys() != _BUNDLE_FIELDS:
        raise WireError(f"bundle header fields: expected {sorted(_BUNDLE_FIELDS)}, got {sorted(map(repr, h))}")
    _check_version(h)
    counts = h["b"]
    if not (isinstance(counts, list) and 1 <= len(counts) <= MAX_BUNDLE_PARTS
            and all(_is_int(c) and c >= 1 for c in counts)):
        raise WireError(f"bundle part counts are not a list of 1 to {MAX_BUNDLE_PARTS} positive integers")
    if sum(counts) != len(frames) - 1:
        raise WireError(f"bundle frame count mismatch (header implies {sum(counts) + 1}, got {len(frames)})")
    sent_at, feedback = _stamp(h)
    parts, i = [], 1
    for count in counts:
        parts.append(frames[i:i + count])
        i += count
    return parts, sent_at, feedback


def _total(frames: Sequence, limits: WireLimits) -> int:
    """The bytes of all `frames`, checked against the limit."""
    if not frames:
        raise WireError("no frames")
    total = sum(_nbytes(f) for f in frames)
    if total > limits.max_message_bytes:
        raise WireError(f"message too large ({total} > {limits.max_message_bytes} bytes)")
    return total


def _check_version(h: dict) -> None:
    if not _is_int(h["v"]) or h["v"] != VERSION:
        raise WireError(f"unsupported schema version {h['v']!r}")


def _stamp(h: dict) -> tuple[float, float | None]:
    """A header's sent time and link feedback, checked."""
    if not (isinstance(h["ts"], float) and math.isfinite(h["ts"]) and h["ts"] >= 0):
        raise WireError(f"bad sent time {h['ts']!r}")
    if h["bw"] is not None and not (isinstance(h["bw"], float) and 0 < h["bw"] < math.inf):
        raise WireError(f"bad link feedback {h['bw']!r}")
    return h["ts"], h["bw"]


def _index_frame(name: str, indices: np.ndarray) -> tuple[bytes | memoryview, str]:
    """The indices as 16-bit gaps where they are increasing and every gap fits, else as they are (uint32)."""
    if indices.size:
        gaps = np.diff(indices.astype(np.int64), prepend=0)
        if gaps.min() >= 0 and gaps.max() < 1 << 16:
            return gaps.astype("<u2").tobytes(), GAP_ENCODING
    return _raw(_wire_array(name, indices)), INDEX_DTYPE


def _wire_array(name: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.name not in _WIRE_DTYPE:
        raise WireError(f"tensor {name!r}: dtype {a.dtype} not allowed")
    return np.asarray(a, dtype=_WIRE_DTYPE[a.dtype.name], order="C")  # keeps 0-d shapes, unlike ascontiguousarray


def _unpack_map(frame, limits: WireLimits) -> dict:
    if _nbytes(frame) > MAX_HEADER_BYTES:
        raise WireError("header too large")
    try:
        header = msgpack.unpackb(
            frame, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0, max_str_len=_MAX_STR,
            max_array_len=_MAX_ITEMS, max_map_len=max(limits.max_meta_entries, len(_SPARSE_FIELDS)) + 1)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as e:
        raise WireError(f"bad msgpack header ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise WireError("header is not a map")
    return header


def _parse_spec(spec) -> tuple[str, np.dtype, tuple[int, ...], int | None, str | None]:
    """(name, dtype, shape, nnz, index encoding); nnz and the encoding are None for a dense tensor."""
    if not isinstance(spec, dict):
        raise WireError("tensor spec is not a map")
    sparse = spec.get("e") == "sparse"
    if set(spec) != (_SPARSE_FIELDS if sparse else _DENSE_FIELDS) or spec["e"] not in ("dense", "sparse"):
        raise WireError("tensor spec fields or encoding invalid")
    name, dtype, shape = spec["n"], spec["d"], spec["sh"]
    if not isinstance(name, str):
        raise WireError("tensor name is not a string")
    if not isinstance(dtype, str) or dtype not in _WIRE_DTYPE:
        raise WireError(f"tensor {name!r}: dtype {dtype!r} not allowed")
    if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
        raise WireError(f"tensor {name!r}: bad shape")
    if not sparse:
        return name, _WIRE_DTYPE[dtype], tuple(shape), None, None
    nnz = spec["nnz"]
    if spec["id"] not in (INDEX_DTYPE, GAP_ENCODING):
        raise WireError(f"tensor {name!r}: sparse index encoding must be {INDEX_DTYPE} or {GAP_ENCODING}")
    if len(shape) != 1 or not (_is_int(nnz) and nnz >= 0):
        raise WireError(f"tensor {name!r}: bad sparse shape or nnz")
    return name, _WIRE_DTYPE[dtype], tuple(shape), nnz, spec["id"]


def _array(frame, dtype: np.dtype, count: int, what: str) -> np.ndarray:
    """The frame's `count` values; bfloat16 is only a wire encoding: it arrives as float32, which every check of
    floats (finite entries, dtypes a strategy accepts) knows."""
    expected = count * dtype.itemsize
    if _nbytes(frame) != expected:
        raise WireError(f"{what}: frame has {_nbytes(frame)} bytes, header implies {expected}")
    values = np.frombuffer(frame, dtype=dtype)
    return values.astype(np.float32) if dtype == BFLOAT16 else values


def decode(frames: Sequence, limits: WireLimits, received_at: float = 0.0) -> Message:
    """Validate and decode one message's frames (bytes-like); raises WireError on any problem."""
    total = _total(frames, limits)
    return _decode(frames, _unpack_map(frames[0], limits), total, limits, received_at)


def _decode(frames: Sequence, h: dict, total: int, limits: WireLimits, received_at: float) -> Message:
    """The message of `frames`, whose first header `h` is unpacked already."""
    missing, extra = _HEADER_FIELDS - h.keys(), h.keys() - _HEADER_FIELDS
    if missing or extra:
        raise WireError(f"header fields: missing {sorted(missing)}, unexpected {sorted(map(repr, extra))}")
    _check_version(h)
    if not isinstance(h["k"], str) or h["k"] not in KINDS:
        raise WireError(f"unknown kind {h['k']!r}")
    if not _is_int(h["s"]) or h["s"] not in limits.known_senders:
        raise WireError(f"unknown sender {h['s']!r}")
    if not (_is_int(h["r"]) and h["r"] >= 0):
        raise WireError(f"bad round {h['r']!r}")
    meta = _check_meta(h["m"], limits.max_meta_entries)
    sent_at, feedback = _stamp(h)
    if not isinstance(h["t"], list):
        raise WireError("tensor list is not a list")
    specs = [_parse_spec(s) for s in h["t"]]
    if len({s[0] for s in specs}) != len(specs):
        raise WireError("duplicate tensor names")
    expected = 1 + sum(1 if nnz is None else 2 for *_, nnz, _ in specs)
    if expected != len(frames):
        raise WireError(f"frame count mismatch (header implies {expected}, got {len(frames)})")
    tensors, i = {}, 1
    for name, dtype, shape, nnz, encoding in specs:
        if nnz is None:
            tensors[name] = _array(frames[i], dtype, math.prod(shape), name).reshape(shape)
            i += 1
        else:
            if encoding == GAP_ENCODING:  # positions in int64, range-checked before the cast to uint32
                indices = np.cumsum(_array(frames[i], np.dtype("<u2"), nnz, f"{name} indices"), dtype=np.int64)
            else:
                indices = _array(frames[i], _WIRE_DTYPE[INDEX_DTYPE], nnz, f"{name} indices")
            values = _array(frames[i + 1], dtype, nnz, f"{name} values")
            _check_indices(indices, shape[0])
            tensors[name] = Sparse(indices.astype(np.uint32, copy=False), values, shape[0])
            i += 2
    return Message(h["k"], h["s"], h["r"], meta, tensors, total, received_at, sent_at, feedback)
