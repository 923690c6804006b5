"""Model plane: strategies that mix this peer's parameters with its in-neighbours' over the round's directed graph
(`dlion.topology`). `mix(round, model)` reads the model's parameters after the local update and leaves the
de-biased ones to continue from; `step(round, params)` is the same on a flat vector."""
from dlion.gossip.pushsum import KIND, NoGossip, PushSum
from dlion.gossip.skew import SkewCompensation
from dlion.gossip.sparse_push import SparsePush

STRATEGIES = {"none": NoGossip, "push-sum": PushSum, "sparse-push": SparsePush}

__all__ = ["KIND", "NoGossip", "PushSum", "SkewCompensation", "SparsePush", "STRATEGIES"]
