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
    ("gossip", {"n": 1, "w": 0.25}, ("x",)),
    ("gossip", {"n": 7, "w": 2.5}, ("x", "owed")),
    ("report", {"rate": 1234.5}, ()),
    ("score", {"loss": -0.5}, ()),
    ("hello", {"heard": "0,2"}, ()),
    ("hello", {"heard": ""}, ()),
    ("model", {}, ("x",)),
    ("probe", {}, ()),
    ("probe", {}, ("payload",)),
])
def test_well_formed_messages_pass(kind, meta, tensors):
    assert messages.problem(kind, meta, tensors) is None


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
    ("gossip", {"n": 0, "w": 1.0}, ("x",)),
    ("gossip", {"n": True, "w": 1.0}, ("x",)),
    ("gossip", {"n": 1}, ("x",)),
    ("report", {"rate": 0.0}, ()),
    ("score", {"loss": "low"}, ()),
    ("hello", {"heard": "0,x"}, ()),
    ("stop", {"acc": 1.0}, ()),
    ("nonsense", {}, ()),
])
def test_malformed_messages_are_named(kind, meta, tensors):
    assert messages.problem(kind, meta, tensors)


def test_a_forged_evaluation_never_reaches_the_mailbox(inproc):
    transports = inproc([0, 1])
    for acc in (True, math.nan, 2.0):
        transports[1].send(0, "eval", 20, None, {"acc": acc})
    transports[1].send(0, "grad", 20, {"g": np.ones(3, np.float32)}, {"w": -1.0})
    assert transports[0].mailbox.latest("eval", 1) is None and transports[0].mailbox.latest("grad", 1) is None
    assert transports[0].stats()[1].dropped == 4
    transports[1].send(0, "eval", 20, None, {"acc": 0.75})
    assert transports[0].mailbox.latest("eval", 1).meta == {"acc": 0.75}
