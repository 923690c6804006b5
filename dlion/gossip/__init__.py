"""Model plane: strategies that mix this peer's parameters with its in-neighbours' over the round's directed graph
(`dlion.topology`: push-sum, Sparse-Push), or pairwise with one random neighbour at a time (AD-PSGD). `mix(round,
model)` reads the model's parameters after the local update and leaves the mixed ones to continue from; `step(round,
params)` is the same on a flat vector."""
from dlion.gossip.adpsgd import AdPsgd
from dlion.gossip.pushsum import KIND, NoGossip, PushSum
from dlion.gossip.skew import SkewCompensation
from dlion.gossip.sparse_push import SparsePush

STRATEGIES = {"none": NoGossip, "push-sum": PushSum, "sparse-push": SparsePush, "ad-psgd": AdPsgd}

__all__ = ["AdPsgd", "KIND", "NoGossip", "PushSum", "SkewCompensation", "SparsePush", "STRATEGIES"]
