"""Wire codec: round trips, and every reason a message is rejected."""
import msgpack
import numpy as np
import pytest

from dlion import messages
from dlion.transport import KINDS, Sparse, WireError, WireLimits, decode, encode
from dlion.transport.wire import BFLOAT16

LIMITS = WireLimits(known_senders=frozenset({0, 1, 2}), max_message_bytes=1 << 17)


def roundtrip(*args, limits=LIMITS, **kwargs):
    return decode([bytes(f) for f in encode(*args, **kwargs)], limits)


def sample():
    """A valid grad message from 1: dense `g` (4 float32), sparse `s` (2 of 10, float32)."""
    return [bytes(f) for f in encode("grad", 1, 3, {
        "g": np.arange(4, dtype=np.float32),
        "s": Sparse(np.array([2, 7], np.uint32), np.array([0.5, -1.5], np.float32), 10)})]


def rewrite(frames, edit):
    """`frames` with the header unpacked, changed in place by `edit`, and packed again."""
    header = msgpack.unpackb(frames[0])
    edit(header)
    return [msgpack.packb(header), *frames[1:]]


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int32", "int64", "uint32", "uint8"])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4)])
def test_dense_roundtrip(dtype, shape):
    a = (np.arange(int(np.prod(shape))) % 7).astype(dtype).reshape(shape)
    frames = encode("model", 2, 9, {"w": a}, {"loss": 0.25, "ok": True, "tag": "x", "none": None, "n": 3})
    msg = decode([bytes(f) for f in frames], LIMITS)
    assert (msg.kind, msg.sender, msg.round) == ("model", 2, 9)
    assert msg.meta == {"loss": 0.25, "ok": True, "tag": "x", "none": None, "n": 3}
    assert msg.tensors["w"].dtype == a.dtype and msg.tensors["w"].shape == shape
    np.testing.assert_array_equal(msg.tensors["w"], a)
    assert msg.nbytes == sum(len(bytes(f)) for f in frames)


def test_bfloat16_travels_in_two_bytes_a_value_and_arrives_as_float32_with_float32s_range():
    a = np.array([1e-30, 3e-9, -2.5, 1.0 / 3.0, 3e38], np.float32)
    frames = encode("optimizer", 1, 4, {"o": a.astype(BFLOAT16), "s": Sparse(np.array([1, 3], np.uint32),
                                                                         a[[1, 3]].astype(BFLOAT16), 5)},
                    {"at": 4, "train_s": 1.0})
    assert len(bytes(frames[1])) == 2 * a.size
    msg = decode([bytes(f) for f in frames], LIMITS)
    got = msg.tensors["o"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, a, rtol=2.0 ** -8)  # round to nearest: half of bfloat16's 2^-7 spacing
    assert got[0] != 0.0 and np.isfinite(got).all()  # float16 would lose the first two and overflow the last
    assert msg.tensors["s"].values.dtype == np.float32
    np.testing.assert_allclose(msg.tensors["s"].values, a[[1, 3]], rtol=2.0 ** -8)


def test_a_non_finite_bfloat16_tensor_is_seen_as_non_finite():
    frames = encode("optimizer", 1, 4, {"o": np.array([1.0, np.inf], np.float32).astype(BFLOAT16)},
                    {"at": 4, "train_s": 1.0})
    msg = decode([bytes(f) for f in frames], LIMITS)
    assert messages.problem(msg.kind, msg.meta, msg.tensors).reason == "non-finite"


def test_sparse_roundtrip_and_mixed_tensors():
    msg = decode(sample(), LIMITS)
    np.testing.assert_array_equal(msg.tensors["g"], np.arange(4, dtype=np.float32))
    s = msg.tensors["s"]
    assert isinstance(s, Sparse) and s.size == 10
    np.testing.assert_array_equal(s.indices, [2, 7])
    assert s.indices.dtype == np.uint32
    np.testing.assert_array_equal(s.values, np.array([0.5, -1.5], np.float32))


def test_empty_sparse_and_no_tensors():
    msg = roundtrip("grad", 0, 0, {"s": Sparse(np.zeros(0, np.uint32), np.zeros(0, np.float16), 5)})
    assert msg.tensors["s"].size == 5 and msg.tensors["s"].values.dtype == np.float16
    assert roundtrip("stop", 0, 0).tensors == {}


def test_encode_normalises_byte_order_layout_and_numpy_meta():
    a = np.arange(12, dtype=">f4").reshape(3, 4).T  # big-endian and not contiguous
    msg = roundtrip("grad", 1, 0, {"a": a}, {"loss": np.float32(1.5), "n": np.int64(4)})
    np.testing.assert_array_equal(msg.tensors["a"], a)
    assert msg.meta == {"loss": 1.5, "n": 4} and type(msg.meta["n"]) is int


def test_every_kind_encodes():
    assert [roundtrip(k, 0, 1).kind for k in KINDS] == list(KINDS)


@pytest.mark.parametrize("args, match", [
    (("rumour", 0, 0), "unknown kind"),
    (("grad", -1, 0), "ints >= 0"),
    (("grad", 0, True), "ints >= 0"),
    (("grad", 0, 0, {"c": np.zeros(2, np.complex64)}), "not allowed"),
    (("grad", 0, 0, {"o": np.array([None])}), "not allowed"),
    (("grad", 0, 0, {"s": Sparse(np.array([1]), np.array([1.0], np.float32), 4)}), "uint32"),
    (("grad", 0, 0, {"s": Sparse(np.array([4], np.uint32), np.array([1.0], np.float32), 4)}), "out of range"),
    (("grad", 0, 0, {"s": Sparse(np.array([1], np.uint32), np.array([1.0, 2.0]), 4)}), "equal length"),
    (("grad", 0, 0, None, {"x": [1, 2]}), "not a scalar"),
])
def test_encode_rejects_what_decode_would(args, match):
    with pytest.raises(WireError, match=match):
        encode(*args)


def test_decode_arrays_are_views_of_the_frames():
    frames = sample()
    assert not decode(frames, LIMITS).tensors["g"].flags.writeable


def _deep(depth):
    return b"\x91" * depth + b"\x01"


BAD = {
    "no frames": (lambda f: [], "no frames"),
    "malformed msgpack": (lambda f: [b"\xc1", *f[1:]], "bad msgpack"),
    "truncated msgpack": (lambda f: [f[0][:-3], *f[1:]], "bad msgpack"),
    "extra data": (lambda f: [f[0] + b"\x00", *f[1:]], "bad msgpack"),
    "nested too deep": (lambda f: [_deep(5000), *f[1:]], "bad msgpack"),
    "int map key": (lambda f: [msgpack.packb({1: 2}), *f[1:]], "bad msgpack"),
    "binary in header": (lambda f: rewrite(f, lambda h: h["m"].update(x=b"ab")), "bad msgpack"),
    "ext type in header": (lambda f: rewrite(f, lambda h: h["m"].update(x=msgpack.ExtType(1, b"z"))),
                           "bad msgpack"),
    "long string": (lambda f: rewrite(f, lambda h: h["m"].update(x="a" * 5000)), "bad msgpack"),
    "header not a map": (lambda f: [msgpack.packb([1, "grad"]), *f[1:]], "not a map"),
    "header too large": (lambda f: [b"\x00" * (64 * 1024 + 1), *f[1:]], "header too large"),
    "missing field": (lambda f: rewrite(f, lambda h: h.pop("r")), "missing \\['r'\\]"),
    "unexpected field": (lambda f: rewrite(f, lambda h: h.update(x=1)), "unexpected"),
    "bad version": (lambda f: rewrite(f, lambda h: h.update(v=1)), "version"),
    "version as string": (lambda f: rewrite(f, lambda h: h.update(v="2")), "version"),
    "sent time missing": (lambda f: rewrite(f, lambda h: h.pop("ts")), "missing \\['ts'\\]"),
    "sent time as int": (lambda f: rewrite(f, lambda h: h.update(ts=5)), "bad sent time"),
    "sent time nan": (lambda f: rewrite(f, lambda h: h.update(ts=float("nan"))), "bad sent time"),
    "negative feedback": (lambda f: rewrite(f, lambda h: h.update(bw=-1.0)), "bad link feedback"),
    "infinite feedback": (lambda f: rewrite(f, lambda h: h.update(bw=float("inf"))), "bad link feedback"),
    "feedback as string": (lambda f: rewrite(f, lambda h: h.update(bw="fast")), "bad link feedback"),
    "unknown kind": (lambda f: rewrite(f, lambda h: h.update(k="rumour")), "unknown kind"),
    "kind not a string": (lambda f: rewrite(f, lambda h: h.update(k=["grad"])), "unknown kind"),
    "unknown sender": (lambda f: rewrite(f, lambda h: h.update(s=7)), "unknown sender"),
    "sender as bool": (lambda f: rewrite(f, lambda h: h.update(s=True)), "unknown sender"),
    "negative round": (lambda f: rewrite(f, lambda h: h.update(r=-1)), "bad round"),
    "round as string": (lambda f: rewrite(f, lambda h: h.update(r="3")), "bad round"),
    "meta not a map": (lambda f: rewrite(f, lambda h: h.update(m=[1])), "meta is not a map"),
    "meta too large": (lambda f: rewrite(f, lambda h: h.update(m={f"k{i}": i for i in range(33)})),
                       "meta too large"),
    "meta list value": (lambda f: rewrite(f, lambda h: h["m"].update(x=[1, 2])), "not a scalar"),
    "meta map value": (lambda f: rewrite(f, lambda h: h["m"].update(x={"a": 1})), "not a scalar"),
    "tensors not a list": (lambda f: rewrite(f, lambda h: h.update(t={})), "not a list"),
    "tensor spec not a map": (lambda f: rewrite(f, lambda h: h["t"].__setitem__(0, 5)), "not a map"),
    "unknown encoding": (lambda f: rewrite(f, lambda h: h["t"][0].update(e="rle")), "encoding"),
    "bad dtype": (lambda f: rewrite(f, lambda h: h["t"][0].update(d="object")), "not allowed"),
    "dtype not a string": (lambda f: rewrite(f, lambda h: h["t"][0].update(d=["float32"])), "not allowed"),
    "negative dim": (lambda f: rewrite(f, lambda h: h["t"][0].update(sh=[-4])), "bad shape"),
    "duplicate names": (lambda f: rewrite(f, lambda h: h["t"][1].update(n="g")), "duplicate"),
    "frame missing": (lambda f: f[:-1], "frame count mismatch"),
    "frame extra": (lambda f: [*f, b""], "frame count mismatch"),
    "dense frame size": (lambda f: [f[0], f[1][:-4], *f[2:]], "frame has 12 bytes, header implies 16"),
    "dense shape lies": (lambda f: rewrite(f, lambda h: h["t"][0].update(sh=[2, 3])), "header implies 24"),
    "sparse index frame size": (lambda f: [*f[:2], f[2] + b"\0" * 4, f[3]], "s indices"),
    "sparse value frame size": (lambda f: [*f[:3], f[3][:4]], "s values"),
    "sparse nnz lies": (lambda f: rewrite(f, lambda h: h["t"][1].update(nnz=3)), "s indices"),
    "sparse index dtype": (lambda f: rewrite(f, lambda h: h["t"][1].update(id="int64")), "index encoding"),
    "sparse 2-d": (lambda f: rewrite(f, lambda h: h["t"][1].update(sh=[2, 5])), "sparse shape"),
    "sparse index out of range": (lambda f: [*f[:2], np.array([2, 10], "<u2").tobytes(), f[3]],  # at 2 and 12
                                  "out of range"),
    "sparse uint32 index out of range": (
        lambda f: [*rewrite(f, lambda h: h["t"][1].update(id="uint32"))[:2], np.array([2, 10], "<u4").tobytes(), f[3]],
        "out of range"),
    "sparse size shrunk": (lambda f: rewrite(f, lambda h: h["t"][1].update(sh=[7])), "out of range"),
    "oversized": (lambda f: [f[0], np.zeros(1 << 15, np.float32).tobytes(), *f[2:]], "too large"),
}


@pytest.mark.parametrize("name", BAD)
def test_decode_rejects(name):
    make, match = BAD[name]
    with pytest.raises(WireError, match=match) as info:
        decode(make(sample()), LIMITS)
    assert info.value.reason == str(info.value)


def test_size_limit_counts_all_frames():
    frames = sample()
    total = sum(len(f) for f in frames)
    assert decode(frames, WireLimits(LIMITS.known_senders, total)).nbytes == total
    with pytest.raises(WireError, match="too large"):
        decode(frames, WireLimits(LIMITS.known_senders, total - 1))


def test_decode_accepts_memoryviews():
    msg = decode([memoryview(f) for f in sample()], LIMITS)
    assert msg.tensors["s"].size == 10


def test_send_time_and_link_feedback_roundtrip():
    frames = encode("grad", 1, 3, None, None, sent_at=1795000000.25, feedback_bps=5e7)
    msg = decode(frames, LIMITS, received_at=1795000000.5)
    assert (msg.sent_at, msg.feedback_bps, msg.received_at) == (1795000000.25, 5e7, 1795000000.5)
    assert decode(encode("grad", 1, 3), LIMITS).feedback_bps is None


@pytest.mark.parametrize("indices,encoding,index_bytes", [
    ([0, 3, 65_538, 65_539], "gap16", 8),            # increasing, every gap below 2^16
    ([3, 0, 5, 9], "uint32", 16),                    # not increasing
    ([1, 80_000], "uint32", 8),                      # a gap of 2^16 or more
    ([70_000], "uint32", 4),                         # the first index is a gap from 0
])
def test_sparse_indices_travel_as_16_bit_gaps_where_they_fit(indices, encoding, index_bytes):
    idx = np.array(indices, np.uint32)
    frames = encode("grad", 1, 0, {"s": Sparse(idx, np.ones(len(idx), np.float16), 100_000)})
    assert msgpack.unpackb(frames[0])["t"][0]["id"] == encoding and len(bytes(frames[1])) == index_bytes
    got = decode(frames, LIMITS).tensors["s"]
    assert got.indices.dtype == np.uint32 and got.indices.tolist() == indices and got.size == 100_000


def test_a_bundle_carries_its_messages_and_its_own_send_time():
    from dlion.transport.wire import encode_bundle, receive
    grad = encode("grad", 1, 4, {"g": np.arange(5, dtype=np.float16)}, {"w": 8.0}, sent_at=1.0)
    figure = encode("eval", 1, 4, None, {"acc": 0.5}, sent_at=2.0)
    frames = encode_bundle([grad, figure], sent_at=1795000000.5, feedback_bps=1e7)
    received = receive(frames, LIMITS, received_at=1795000001.0)
    assert (received.sent_at, received.feedback_bps) == (1795000000.5, 1e7)
    got = received.messages
    assert [(m.kind, m.round, m.received_at) for m in got] == [("grad", 4, 1795000001.0), ("eval", 4, 1795000001.0)]
    assert got[0].tensors["g"].tolist() == [0, 1, 2, 3, 4] and got[1].meta == {"acc": 0.5}
    alone = receive(grad, LIMITS)  # one message, not a bundle: stamped by its own header
    assert [m.kind for m in alone.messages] == ["grad"] and alone.sent_at == 1.0


BAD_BUNDLES = {
    "counts beyond the frames": (lambda h: h.update(b=[2, 5]), "frame count"),
    "a part without frames": (lambda h: h.update(b=[0, 2, 1]), "part counts"),
    "counts not a list": (lambda h: h.update(b=3), "part counts"),
    "an extra field": (lambda h: h.update(k="grad"), "bundle header fields"),
    "a bad send time": (lambda h: h.update(ts=-1.0), "sent time"),
    "another version": (lambda h: h.update(v=2), "version"),
}


@pytest.mark.parametrize("name", BAD_BUNDLES)
def test_a_malformed_bundle_header_is_rejected(name):
    from dlion.transport.wire import encode_bundle, receive
    change, match = BAD_BUNDLES[name]
    frames = encode_bundle([encode("eval", 1, 4, None, {"acc": 0.5}), encode("grad", 1, 4, None, {"w": 1.0})])
    header = msgpack.unpackb(frames[0])
    change(header)
    with pytest.raises(WireError, match=match):
        receive([msgpack.packb(header), *frames[1:]], LIMITS)
