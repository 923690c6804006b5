"""scripts/attack.py's message generators, without sockets or TensorFlow: every category produces frames, and the
codec rejects every malformed variant, so that a flood's malformed messages test the codec and its well-formed ones
reach the checks above it."""
import importlib.util
import sys

import msgpack
import numpy as np
import pytest

from conftest import ROOT
from dlion import config as configmod
from dlion import wiring
from dlion.transport import wire

_spec = importlib.util.spec_from_file_location("attack", ROOT / "scripts" / "attack.py")
attack = importlib.util.module_from_spec(_spec)
sys.modules["attack"] = attack  # dataclasses look their module up while the file executes
_spec.loader.exec_module(attack)

NUM_PARAMS = 70_000  # above 65,535: the 16-bit gap variants need a vector longer than one gap
CONFIG = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def cfg():
    return configmod.load(CONFIG)


@pytest.fixture(scope="module")
def target(cfg):
    return attack.make_target(cfg, 0, num_params=NUM_PARAMS)


@pytest.fixture(scope="module")
def limits(cfg):
    return attack.wire_limits(cfg, NUM_PARAMS)


def every_variant(target, rounds=2, seed=3):
    """Each category's attacks, every variant `rounds` times (the variants draw different random parameters)."""
    forge = attack.Forge(target, np.random.default_rng(seed), rounds_per_s=100.0)
    out = {}
    for name, stream in attack.streams(forge).items():
        out[name] = [next(stream) for _ in range(rounds * len(attack.CATEGORIES[name]))]
    return out


def frames_of(a):
    return [bytes(f) for f in a.frames]


def test_target_follows_the_config(cfg, target, limits):
    assert target.endpoint == "tcp://127.0.0.1:47100"
    assert target.as_peer == 1 and target.others == (1, 2)
    assert target.max_message_bytes == limits.max_message_bytes == wiring.max_message_bytes(NUM_PARAMS)
    assert limits.known_senders == frozenset(cfg.peer_ids)
    assert attack.make_target(cfg, 2, as_peer=0, num_params=10).as_peer == 0
    forge = attack.Forge(target, np.random.default_rng())
    assert forge.identity == attack.routing_id(1, forge.incarnation) and forge.identity.startswith(b"1")


def test_every_category_produces_frames(target):
    expected = {"garbage", "bad_header", "wrong_size", "non_finite", "finite_poison", "forged_control", "far_future",
                "takeover"}
    attacks = every_variant(target)
    assert set(attacks) == expected
    for name, batch in attacks.items():
        assert all(a.category == name and a.variant for a in batch)
        assert any(frames_of(a) for a in batch), name
        assert {a.variant for a in batch} == {fn.__name__.lstrip("_") for fn in attack.CATEGORIES[name]}


def test_malformed_categories_are_rejected_by_the_codec(target, limits):
    attacks = every_variant(target, rounds=3)
    for name in attack.MALFORMED:
        for a in attacks[name]:
            frames = frames_of(a)
            if a.identity != attack.routing_id(target.as_peer):
                continue  # a stranger's routing id: the transport drops it before decoding
            with pytest.raises(wire.WireError):
                decode = wire.decode(frames, limits)
                pytest.fail(f"{name}/{a.variant} decoded: {decode.kind} {decode.meta}")


def test_oversize_variants_are_just_above_the_limit(target):
    attacks = every_variant(target)["wrong_size"]
    oversize = [a for a in attacks if a.variant.startswith("oversize")]
    assert oversize
    for a in oversize:
        size = sum(len(f) for f in frames_of(a))
        assert target.max_message_bytes < size <= target.max_message_bytes + 4096, a.variant


def well_formed_header(frames) -> dict:
    """The header of a message as the real encoder writes it: every field, this version, a known kind from a known
    peer, and one frame per dense tensor and two per sparse one (what the content holds is not checked here: the
    hardening may reject it in the codec or above)."""
    header = msgpack.unpackb(frames[0])
    assert set(header) == {"v", "k", "s", "r", "m", "t", "ts", "bw"}
    assert header["v"] == wire.VERSION and header["k"] in wire.KINDS
    assert len(frames) == 1 + sum(2 if spec["e"] == "sparse" else 1 for spec in header["t"])
    return header


def test_hostile_but_well_formed_messages_come_from_the_real_encoder(target):
    attacks = every_variant(target)
    for name in ("non_finite", "finite_poison", "forged_control", "far_future"):
        for a in attacks[name]:
            assert well_formed_header(frames_of(a))["s"] in target.peer_ids, a.variant


def test_non_finite_and_poison_have_the_model_lengths(target):
    attacks = every_variant(target)
    lengths = {spec["sh"][0] for a in attacks["non_finite"] + attacks["finite_poison"]
               for spec in well_formed_header(frames_of(a))["t"]}
    assert NUM_PARAMS in lengths
    far = {well_formed_header(frames_of(a))["r"] for a in attacks["far_future"]}
    assert min(far) >= 10**6


def test_takeover_claims_real_peers_on_fresh_connections(target):
    forge = attack.Forge(target, np.random.default_rng())
    stream = attack.category_stream("takeover", forge)
    takeovers = [next(stream) for _ in range(12)]
    assert {a.identity for a in takeovers} == {attack.routing_id(2, forge.incarnation), b"2"}  # not 1: --as-peer
    assert all(a.hold_s is not None for a in takeovers)
    assert any(not a.frames for a in takeovers) and any(a.frames for a in takeovers)


def test_server_key_forms(tmp_path):
    import zmq
    public, _ = zmq.curve_keypair()
    assert attack.load_server_key(public.decode()) == public
    (tmp_path / "bare.key").write_bytes(public + b"\n")
    assert attack.load_server_key("bare.key", tmp_path) == public
    import zmq.auth
    cert_public, _ = zmq.auth.create_certificates(str(tmp_path), "peer")
    cert = next(tmp_path.glob("peer.key"))
    assert attack.load_server_key(str(cert)) == open(cert_public, "rb").read().split(b'"')[1]
