"""Message kinds declared once: the transport files only messages whose metadata and tensors match their kind."""
import math

import numpy as np
import pytest

from dlion import messages
from dlion.transport import KINDS


def test_the_wire_knows_exactly_the_declared_kinds():
    assert set(KINDS) == set(messages.KINDS)


@pytest.mark.parametrize("kind,meta,tensors", [
    ("eval", {"acc": 0.5}, ()),
    ("eval", {"acc": 1.0}, ()),
    ("grad", {"w": 32.0}, ("g",)),
    ("gossip", {"e": 3, "n": 1, "w": 0.25}, ("x",)),
    ("gossip", {"e": 3, "n": 7, "w": 2.5}, ("x", "owed")),
    ("credit", {"e": 3, "w": 2.5}, ()),
    ("avg-request", {}, ("x",)),
    ("avg-reply", {}, ("x",)),
    ("stop", {"figures": "0:40:0.875,1:40:0.9,2:20:0.5"}, ()),
    ("report", {"rate": 1234.5}, ()),
    ("score", {"loss": 0.5}, ()),
    ("hello", {"heard": "0,2", "at": 0, "rate": 0.0}, ()),  # no rate expected (a simulated peer)
    ("rejoin", {}, ()),
    ("back", {"at": 7}, ()),
    ("hello", {"heard": "", "at": 550, "rate": 812.5}, ()),
    ("model", {}, ("x",)),
    ("optimizer", {"at": 40, "train_s": 12.5}, ("o",)),
    ("probe", {}, ()),
    ("probe", {}, ("payload",)),
])
def test_well_formed_messages_pass(kind, meta, tensors):
    assert messages.problem(kind, meta, tensors_named(tensors), max_batch_weight=32.0) is None


def tensors_named(names, value=1.0):
    return {name: np.full(3, value, np.float32) for name in names}


@pytest.mark.parametrize("kind,meta,tensors", [
    ("eval", {"acc": True}, ()),             # a bool is no accuracy
    ("eval", {"acc": math.nan}, ()),
    ("eval", {"acc": 2.0}, ()),
    ("eval", {"acc": 1}, ()),                # ints are not floats on our wire
    ("eval", {}, ()),
    ("eval", {"acc": 0.5, "extra": 1}, ()),  # unknown keys
    ("grad", {"w": -1.0}, ("g",)),
    ("grad", {"w": math.inf}, ("g",)),
    ("grad", {"w": 1.0}, ()),                # no gradient
    ("grad", {"w": 1.0}, ("g", "h")),        # a tensor the kind does not carry
    ("grad", {"w": 33.0}, ("g",)),           # more than the global batch
    ("gossip", {"e": 1, "n": 0, "w": 1.0}, ("x",)),
    ("gossip", {"e": 1, "n": True, "w": 1.0}, ("x",)),
    ("gossip", {"e": 1, "n": 1}, ("x",)),
    ("gossip", {"n": 1, "w": 1.0}, ("x",)),  # no epoch
    ("gossip", {"e": -1, "n": 1, "w": 1.0}, ("x",)),
    ("avg-request", {}, ()),                 # no model
    ("avg-reply", {"w": 1.0}, ("x",)),       # a weight AD-PSGD does not carry
    ("stop", {}, ()),                        # a stop without its evidence
    ("stop", {"figures": "0:20:0.9,0:40:0.9"}, ()),  # a peer twice
    ("stop", {"figures": "0:20:1.5"}, ()),
    ("stop", {"figures": "0:20:nan"}, ()),
    ("stop", {"figures": "0:0.9"}, ()),                # no round
    ("stop", {"figures": "0:-1:0.9"}, ()),
    ("stop", {"figures": "0:%d:0.9" % (1 << 63)}, ()),  # a round past 63 bits
    ("stop", {"figures": "\u00b2:20:0.9"}, ()),         # digits int() refuses: a clear rejection, not an exception
    ("stop", {"figures": "0:\u0663:0.9"}, ()),          # a non-ASCII digit
    ("report", {"rate": 0.0}, ()),
    ("score", {"loss": "low"}, ()),
    ("score", {"loss": -1e30}, ()),          # no cross-entropy is negative
    ("hello", {"heard": "0,x", "at": 0, "rate": 1.0}, ()),
    ("hello", {"heard": "0,\u00b2", "at": 0, "rate": 1.0}, ()),  # passed the check once, then int() raised as read
    ("hello", {"heard": "0", "at": -1, "rate": 1.0}, ()),
    ("hello", {"heard": "0", "at": 0, "rate": -5.0}, ()),
    ("hello", {"heard": "0", "at": 0, "rate": float("inf")}, ()),
    ("hello", {"heard": "0", "at": 0}, ()),  # the rate left out
    ("stop", {"acc": 1.0}, ()),
    ("nonsense", {}, ()),
])
def test_malformed_messages_are_named(kind, meta, tensors):
    assert messages.problem(kind, meta, tensors_named(tensors), max_batch_weight=32.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_tensors_are_named(value):
    assert messages.problem("grad", {"w": 1.0}, tensors_named(["g"], value)).reason == "non-finite"


def test_a_forged_evaluation_never_reaches_the_mailbox(inproc):
    transports = inproc([0, 1])
    for acc in (True, math.nan, 2.0):
        transports[1].send(0, "eval", 20, None, {"acc": acc})
    transports[1].send(0, "grad", 20, {"g": np.ones(3, np.float32)}, {"w": -1.0})
    assert transports[0].mailbox.latest("eval", 1) is None and transports[0].mailbox.latest("grad", 1) is None
    assert transports[0].stats()[1].dropped == 4
    transports[1].send(0, "eval", 20, None, {"acc": 0.75})
    assert transports[0].mailbox.latest("eval", 1).meta == {"acc": 0.75}
