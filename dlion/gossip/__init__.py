"""Model plane: strategies that mix this peer's parameters with its in-neighbours' over the round's directed graph
(`dlion.topology`). `step(round, params)` takes the parameters after the local update and returns a `GossipResult`
whose `params` are the de-biased ones to continue from."""
from dlion.gossip.pushsum import KIND, GossipResult, NoGossip, PushSum
from dlion.gossip.skew import SkewCompensation
from dlion.gossip.sparse_push import SparsePush

STRATEGIES = {"none": NoGossip, "push-sum": PushSum, "sparse-push": SparsePush}

__all__ = ["KIND", "GossipResult", "NoGossip", "PushSum", "SkewCompensation", "SparsePush", "STRATEGIES"]
